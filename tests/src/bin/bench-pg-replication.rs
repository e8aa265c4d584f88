//! Benchmark of PostgreSQL replication through the release agent, all on 127.0.0.1 with one
//! agent per server over HTTPS with mutual TLS:
//!
//! - **promotion**: time from calling `promote_to_replica_source` on a streaming replica to
//!   the first committed write on it (through a session opened before the call), repeated
//!   with the two servers swapping roles (the old primary is demoted and rewound each time);
//! - **attach**: time for `attach_replica` to seed a fresh replica of a ~1 GB database
//!   (`pgbench -i -s 70`) until it streams, against seeding one by hand in the same run:
//!   `pg_basebackup -X stream -c fast -R` into an empty directory, starting the server and
//!   waiting until it streams. Runs alternate between the two.
//!
//! Usage: `bench-pg-replication --agent target/release/guest-agent [--runs N] [--attach-runs N]
//! [--scale N] [--out bench/pg-replication.json]` (run through `tools/bench-pg-replication.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use guest_agent_e2e::services::postgres::{connect, stop_postmaster};
use guest_agent_e2e::{
    Agent, PG_BIN, PG_OS_USER, ROOT_PASSWORD, ROOT_USER, RpcClient, TestEnv, chown_to_postgres,
    prepare_args,
};
use serde_json::{Value, json};

/// Target: promotion to first write, seconds.
const TARGET_PROMOTE_S: f64 = 2.0;
/// Target: agent attach time over by-hand seeding.
const TARGET_ATTACH_RATIO: f64 = 1.1;
/// Bound on waiting for a state the servers reach by themselves.
const BOUND: Duration = Duration::from_secs(600);

/// Measures promotion to first write and replica attach against pg_basebackup by hand.
#[derive(Debug, clap::Parser)]
#[command(name = "bench-pg-replication")]
struct Args {
    /// The agent binary to measure (e.g. target/release/guest-agent).
    #[arg(long, value_parser = guest_agent_e2e::bench_agent)]
    agent: PathBuf,
    /// Promotions to time.
    #[arg(long, default_value_t = 5, value_parser = positive_usize)]
    runs: usize,
    /// Replica attaches to time (each way).
    #[arg(long, default_value_t = 3, value_parser = positive_usize)]
    attach_runs: usize,
    /// Pgbench scale of the attached database.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u32).range(1..))]
    scale: u32,
    /// Where the figures go as JSON.
    #[arg(long, default_value_os_t = guest_agent_e2e::workspace_root().join("bench").join("pg-replication.json"))]
    out: PathBuf,
}

/// A whole number of at least 1.
fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a positive whole number".to_owned()),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// One server with its own agent (release build).
struct Node {
    env: TestEnv,
    agent: Agent,
    client: RpcClient,
}

impl Node {
    async fn prepared(bin: &Path) -> Result<Self> {
        let env = TestEnv::new();
        let mut agent = Agent::spawn_bin(bin, &env, &env.config());
        let client = env.client();
        agent.wait_healthz(&client).await;
        client.prepare(prepare_args()).await;
        client.wait_status("healthy").await;
        Ok(Self { env, agent, client })
    }

    async fn root(&self) -> Result<tokio_postgres::Client> {
        connect(self.env.pg_port, ROOT_USER, ROOT_PASSWORD, "postgres")
            .await
            .context("root login")
    }

    async fn call(&self, method: &str, args: Value) -> Result<Value> {
        let r = self.client.rpc(method, &args).await;
        match (r.status, r.body.get("result")) {
            (200, Some(v)) => Ok(v.clone()),
            _ => bail!(
                "{method} failed: {} {}\nagent log:\n{}",
                r.status,
                r.body,
                self.agent.stderr()
            ),
        }
    }
}

/// Runs `program args…` as the PostgreSQL OS user (when root), with `env`.
fn run_as_postgres(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Result<()> {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_OS_USER, "--", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Polls `pg_stat_wal_receiver` on `port` until it streams.
async fn wait_streaming(port: u16) -> Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(c) = connect(port, ROOT_USER, ROOT_PASSWORD, "postgres").await
            && let Ok(Some(row)) = c
                .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                .await
            && row.get::<_, String>(0) == "streaming"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server on port {port} never streamed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seeds a standby of `primary` by hand into a fresh environment, starts it and waits until
/// it streams; returns (base backup time, total time).
async fn by_hand(primary: &Node, snapshot: &Value) -> Result<(Duration, Duration)> {
    let env = TestEnv::new();
    let user = snapshot["replica_conf"]["replication_user"]["name"]
        .as_str()
        .context("snapshot user")?;
    let password = snapshot["replica_conf"]["replication_user"]["password"]
        .as_str()
        .context("snapshot password")?;
    let passfile = env.run_dir.join("bench.pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:*:{user}:{password}\n", primary.env.pg_port),
    )?;
    guest_agent_e2e::set_mode(&passfile, 0o600);
    chown_to_postgres(&passfile);
    let data = env.data_dir.display().to_string();
    let port = primary.env.pg_port.to_string();
    let basebackup = format!("{PG_BIN}/pg_basebackup");
    let pg_ctl = format!("{PG_BIN}/pg_ctl");
    let t0 = Instant::now();
    run_as_postgres(
        &basebackup,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            user,
            "-D",
            &data,
            "-X",
            "stream",
            "-c",
            "fast",
            "-R",
            "-w",
        ],
        &[("PGPASSFILE", &passfile)],
    )?;
    let base = t0.elapsed();
    // The copied configuration names the primary's port and socket: override both.
    let opts = format!(
        "-p {} -k {} -c listen_addresses=127.0.0.1",
        env.pg_port,
        env.run_dir.display()
    );
    let log = env.run_dir.join("by-hand.log").display().to_string();
    run_as_postgres(
        &pg_ctl,
        &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        &[],
    )?;
    wait_streaming(env.pg_port).await?;
    let total = t0.elapsed();
    stop_postmaster(&env.data_dir);
    Ok((base, total))
}

/// Attaches a fresh replica of `primary` through its agent; returns the time of the call.
async fn agent_attach(bin: &Path, primary: &Node, id: &str) -> Result<Duration> {
    let replica = Node::prepared(bin).await?;
    let snap = primary
        .call("get_replication_snapshot", json!({"replica_id": id}))
        .await?;
    let t0 = Instant::now();
    replica
        .call("attach_replica", json!({"replica_info": snap}))
        .await?;
    let took = t0.elapsed();
    drop(replica);
    primary
        .call(
            "cleanup_source_on_replica_detach",
            json!({"replica_id": id}),
        )
        .await?;
    Ok(took)
}

/// Promotes `replica` and times until a write commits through a session opened before.
async fn promote_to_write(replica: &Node) -> Result<Duration> {
    let session = replica.root().await?;
    session
        .batch_execute("SELECT 1")
        .await
        .context("session on the replica")?;
    let t0 = Instant::now();
    replica.call("promote_to_replica_source", json!({})).await?;
    loop {
        if session
            .batch_execute("INSERT INTO bench_writes DEFAULT VALUES")
            .await
            .is_ok()
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > BOUND {
            bail!("no write succeeded after the promotion");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn bench_promotion(args: &Args) -> Result<Vec<f64>> {
    let mut a = Node::prepared(&args.agent).await?;
    let mut b = Node::prepared(&args.agent).await?;
    a.root()
        .await?
        .batch_execute("CREATE TABLE bench_writes (id bigserial PRIMARY KEY)")
        .await?;
    let snap = a
        .call("get_replication_snapshot", json!({"replica_id": "bench_b"}))
        .await?;
    b.call("attach_replica", json!({"replica_info": snap}))
        .await?;
    let mut runs = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        // b replicates from a. A switchover: fence a (its last WAL reaches b), promote b,
        // then make a its replica for the next run.
        a.call("demote_replication_master", json!({})).await?;
        let took = promote_to_write(&b).await?;
        println!("promotion run {}: {:.3} s", i + 1, secs(took));
        runs.push(secs(took));
        let ctx = b.call("get_replica_context", json!({})).await?;
        a.call("attach_replica", json!({"replica_info": ctx}))
            .await?;
        std::mem::swap(&mut a, &mut b);
    }
    Ok(runs)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    guest_agent_e2e::init_crypto();
    let args = <Args as clap::Parser>::parse();

    let promotion = bench_promotion(&args).await?;

    // A primary of about 1 GB.
    let primary = Node::prepared(&args.agent).await?;
    let fill = Instant::now();
    let pgbench = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.env.pg_port.to_string(),
            "-U",
            ROOT_USER,
            "-i",
            "-s",
            &args.scale.to_string(),
            "-q",
            "postgres",
        ])
        .env("PGPASSWORD", ROOT_PASSWORD)
        .output()
        .context("running pgbench")?;
    if !pgbench.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&pgbench.stderr)
        );
    }
    let size: i64 = primary
        .root()
        .await?
        .query_one("SELECT pg_database_size('postgres')", &[])
        .await?
        .get(0);
    println!(
        "filled with pgbench -i -s {} in {:.1} s: {} MB",
        args.scale,
        secs(fill.elapsed()),
        size / 1_000_000
    );
    let snap = primary
        .call(
            "get_replication_snapshot",
            json!({"replica_id": "bench_by_hand"}),
        )
        .await?;
    primary
        .call(
            "cleanup_source_on_replica_detach",
            json!({"replica_id": "bench_by_hand"}),
        )
        .await?;

    // Start from a quiet primary: the fill's dirty buffers written out once, not by the
    // first timed copy's checkpoint.
    primary.root().await?.batch_execute("CHECKPOINT").await?;

    let mut hand_base = Vec::new();
    let mut hand_total = Vec::new();
    let mut attach = Vec::new();
    for i in 0..args.attach_runs {
        // Alternate which goes first, so neither always meets a warmer page cache; flush the
        // previous copy's dirty pages so its write-back does not slow the next one.
        for by_agent in [i % 2 == 1, i % 2 == 0] {
            nix::unistd::sync();
            if by_agent {
                let took =
                    agent_attach(&args.agent, &primary, &format!("bench_attach_{i}")).await?;
                println!("agent attach run {}: {:.3} s", i + 1, secs(took));
                attach.push(secs(took));
            } else {
                let (base, total) = by_hand(&primary, &snap).await?;
                println!(
                    "by hand run {}: pg_basebackup {:.3} s, until streaming {:.3} s",
                    i + 1,
                    secs(base),
                    secs(total)
                );
                hand_base.push(secs(base));
                hand_total.push(secs(total));
            }
        }
    }

    let promote_med = median(&promotion);
    let promote_max = promotion.iter().copied().fold(0.0, f64::max);
    let attach_med = median(&attach);
    let hand_med = median(&hand_total);
    let base_med = median(&hand_base);
    let ratio = attach_med / hand_med;
    let ratio_base = attach_med / base_med;
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "guest-agent PostgreSQL replication benchmark ({})",
        args.agent.display()
    );
    println!(
        "{:<58} {:>10} {:>10} {:>7}",
        "measure", "value", "target", ""
    );
    println!("{}", "-".repeat(88));
    println!(
        "{:<58} {:>8.3} s {:>8} s {:>7}",
        format!(
            "promote_to_replica_source to first write (median of {})",
            promotion.len()
        ),
        promote_med,
        format!("< {TARGET_PROMOTE_S}"),
        verdict(promote_med < TARGET_PROMOTE_S)
    );
    println!("{:<58} {:>8.3} s", "  slowest run", promote_max);
    println!(
        "{:<58} {:>8.3} s",
        format!(
            "attach_replica, {} MB (median of {})",
            size / 1_000_000,
            attach.len()
        ),
        attach_med
    );
    println!(
        "{:<58} {:>8.3} s",
        "by hand: pg_basebackup, start, until streaming", hand_med
    );
    println!("{:<58} {:>8.3} s", "by hand: pg_basebackup alone", base_med);
    println!(
        "{:<58} {:>10.3} {:>10} {:>7}",
        "ratio attach / by hand (until streaming)",
        ratio,
        format!("<= {TARGET_ATTACH_RATIO}"),
        verdict(ratio <= TARGET_ATTACH_RATIO)
    );
    println!(
        "{:<58} {:>10.3}",
        "ratio attach / pg_basebackup alone", ratio_base
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1);
    let results = json!({
        "measured_at_unix": now,
        "machine": {"cpus": cpus, "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
        "agent": args.agent.display().to_string(),
        "setup": "release agents, one per PostgreSQL 15 server, HTTPS with mutual TLS, all on 127.0.0.1",
        "promotion": {
            "what": "promote_to_replica_source called on a streaming replica until an INSERT commits through a session opened before the call",
            "runs_s": promotion.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "median_s": r3(promote_med),
            "max_s": r3(promote_max),
            "target_lt_s": TARGET_PROMOTE_S,
            "met": promote_med < TARGET_PROMOTE_S,
        },
        "attach": {
            "database_bytes": size,
            "pgbench_scale": args.scale,
            "agent_attach_s": attach.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "by_hand_until_streaming_s": hand_total.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "by_hand_basebackup_s": hand_base.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "by_hand": "pg_basebackup -X stream -c fast -R into an empty directory, pg_ctl start, until pg_stat_wal_receiver streams",
            "ratio_vs_by_hand": r3(ratio),
            "ratio_vs_basebackup_alone": r3(ratio_base),
            "target_ratio_le": TARGET_ATTACH_RATIO,
            "met": ratio <= TARGET_ATTACH_RATIO,
        },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
