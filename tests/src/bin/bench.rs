//! Benchmark of the agent binary: time from spawn to the first successful HTTPS `/healthz`,
//! idle resident memory, and `rpc_ping` round-trip latency over HTTPS with mutual TLS and
//! keep-alive. Prints a table with the targets and writes `bench/results.json`.
//!
//! Usage: `bench --agent target/release/guest-agent [--calls 10000] [--starts 5]
//! [--out bench/results.json]` (run through `tools/bench.sh`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use guest_agent_e2e::{Agent, RpcClient, TestEnv};
use serde_json::{Value, json};

/// Targets printed next to the figures.
const TARGET_RSS_MIB: f64 = 15.0;
const TARGET_READY_MS: f64 = 100.0;
const TARGET_P99_MS: f64 = 2.0;

/// Measures startup, idle RSS and rpc_ping latency of the agent binary.
#[derive(Debug, clap::Parser)]
#[command(name = "bench")]
struct Args {
    /// The agent binary to measure (e.g. target/release/guest-agent).
    #[arg(long, value_parser = guest_agent_e2e::bench_agent)]
    agent: PathBuf,
    /// `rpc_ping` calls to time.
    #[arg(long, default_value_t = 10_000, value_parser = positive_usize)]
    calls: usize,
    /// Agent starts to time.
    #[arg(long, default_value_t = 5, value_parser = positive_usize)]
    starts: usize,
    /// Where the figures go as JSON.
    #[arg(long, default_value_os_t = guest_agent_e2e::workspace_root().join("bench").join("results.json"))]
    out: PathBuf,
}

/// A whole number of at least 1.
fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a positive whole number".to_owned()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `x` rounded to 3 decimals, for a readable results file.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The value at quantile `q` (0..=1) of sorted `v`, nearest-rank.
fn quantile(v: &[Duration], q_percent: usize) -> Duration {
    let rank = (v.len() * q_percent).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS in /proc status")
}

/// Spawns the agent and polls `/healthz` as fast as possible; returns the agent and the
/// time from spawn to the first 200.
async fn start_and_time(
    bin: &Path,
    env: &TestEnv,
    client: &RpcClient,
) -> Result<(Agent, Duration)> {
    let t0 = Instant::now();
    let mut agent = Agent::spawn_bin(bin, env, &env.config());
    loop {
        if let Ok(r) = client.try_get("/healthz").await
            && r.status == 200
        {
            return Ok((agent, t0.elapsed()));
        }
        if let Some(st) = agent.try_status() {
            bail!(
                "the agent exited ({st}) during startup; log:\n{}",
                agent.stderr()
            );
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "the agent did not answer /healthz within 30 s; log:\n{}",
                agent.stderr()
            );
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    guest_agent_e2e::init_crypto();
    let args = <Args as clap::Parser>::parse();
    let env = TestEnv::new();

    // Startup: spawn to first successful HTTPS /healthz (fresh client each time, so each
    // measurement includes a full TLS handshake).
    let mut startups = Vec::with_capacity(args.starts);
    for _ in 0..args.starts {
        let client = env.client();
        let (mut agent, took) = start_and_time(&args.agent, &env, &client).await?;
        startups.push(took);
        let st = agent.terminate().await;
        if st.code() != Some(0) {
            bail!(
                "the agent exited with {st} on SIGTERM; log:\n{}",
                agent.stderr()
            );
        }
    }
    let mut sorted_startups = startups.clone();
    sorted_startups.sort();
    let ready = quantile(&sorted_startups, 50);

    // The agent under test for memory and latency.
    let client = env.client();
    let (agent, _) = start_and_time(&args.agent, &env, &client).await?;
    let pid = agent.pid().as_raw();
    for m in [
        "rpc_ping",
        "get_status",
        "get_hwinfo",
        "get_filesystem_stats",
    ] {
        client.call(m, json!({})).await;
    }
    client.get("/v1/status").await;
    client.get("/metrics").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(pid)?;

    // rpc_ping latency, sequential, one keep-alive connection.
    for _ in 0..200 {
        client.call("rpc_ping", json!({})).await;
    }
    let mut lat = Vec::with_capacity(args.calls);
    let all = Instant::now();
    for _ in 0..args.calls {
        let t = Instant::now();
        let r = client.rpc("rpc_ping", &json!({})).await;
        lat.push(t.elapsed());
        if r.status != 200 {
            bail!("rpc_ping answered {} {}", r.status, r.body);
        }
    }
    let wall = all.elapsed();
    let rss_after = rss_kib(pid)?;
    drop(agent);
    lat.sort();
    let p50 = quantile(&lat, 50);
    let p99 = quantile(&lat, 99);
    let max = *lat.last().context("no samples")?;
    #[allow(clippy::cast_precision_loss)]
    let rate = args.calls as f64 / wall.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let idle_mib = idle_rss as f64 / 1024.0;

    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!("guest-agent benchmark ({})", args.agent.display());
    println!(
        "{:<46} {:>12} {:>12} {:>8}",
        "measure", "value", "target", ""
    );
    println!("{}", "-".repeat(82));
    println!(
        "{:<46} {:>9.1} ms {:>9} ms {:>8}",
        format!("ready: spawn to HTTPS /healthz (median of {})", args.starts),
        ms(ready),
        format!("< {TARGET_READY_MS:.0}"),
        verdict(ms(ready) < TARGET_READY_MS)
    );
    println!(
        "{:<46} {:>8.2} MiB {:>8} MiB {:>8}",
        "idle RSS (after 2 s idle)",
        idle_mib,
        format!("< {TARGET_RSS_MIB:.0}"),
        verdict(idle_mib < TARGET_RSS_MIB)
    );
    println!(
        "{:<46} {:>9.3} ms {:>12}",
        format!("rpc_ping p50 ({} calls)", args.calls),
        ms(p50),
        ""
    );
    println!(
        "{:<46} {:>9.3} ms {:>9} ms {:>8}",
        "rpc_ping p99",
        ms(p99),
        format!("< {TARGET_P99_MS:.0}"),
        verdict(ms(p99) < TARGET_P99_MS)
    );
    println!("{:<46} {:>9.3} ms", "rpc_ping max", ms(max));
    println!(
        "{:<46} {:>9.0} /s",
        "rpc_ping throughput (sequential)", rate
    );
    #[allow(clippy::cast_precision_loss)]
    let rss_after_mib = rss_after as f64 / 1024.0;
    println!(
        "{:<46} {:>8.2} MiB",
        "RSS after the latency run", rss_after_mib
    );
    println!(
        "startup runs (ms): {}",
        startups
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1);
    let results: Value = json!({
        "measured_at_unix": now,
        "machine": {"cpus": cpus, "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
        "agent": args.agent.display().to_string(),
        "setup": "release build, unprepared agent, HTTPS with mutual TLS on 127.0.0.1, one keep-alive connection",
        "ready_ms": {
            "median": r3(ms(ready)),
            "runs": startups.iter().map(|d| r3(ms(*d))).collect::<Vec<_>>(),
            "target_lt": TARGET_READY_MS,
            "met": ms(ready) < TARGET_READY_MS,
        },
        "idle_rss": {
            "kib": idle_rss,
            "mib": r3(idle_mib),
            "after_latency_run_kib": rss_after,
            "target_lt_mib": TARGET_RSS_MIB,
            "met": idle_mib < TARGET_RSS_MIB,
        },
        "rpc_ping": {
            "calls": args.calls,
            "p50_ms": r3(ms(p50)),
            "p99_ms": r3(ms(p99)),
            "max_ms": r3(ms(max)),
            "calls_per_sec": rate.round(),
            "target_p99_lt_ms": TARGET_P99_MS,
            "met": ms(p99) < TARGET_P99_MS,
        },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("\nwrote {}", args.out.display());
    Ok(())
}
