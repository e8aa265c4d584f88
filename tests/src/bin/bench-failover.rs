//! Failover benchmark: three MariaDB servers, each with its own agent (the release build),
//! a primary and two replicas set up through the agents. The primary's server and agent are
//! killed (SIGKILL); the clock runs from the kill until the most advanced replica is
//! promoted and writable and the other replica is re-pointed to it, every step through the
//! agents' RPCs over HTTPS with mutual TLS:
//!
//! 1. `get_latest_txn_id` on both replicas (concurrently); the most advanced one without
//!    transactions of its own (errant) is the candidate;
//! 2. `promote_to_replica_source` on the candidate, `detach_replica(for_failover)` on the other
//!    (concurrently);
//! 3. a write on the new primary as the application user succeeds (writable);
//! 4. `get_replica_context` on the new primary, `attach_replica` on the other (which returns
//!    once both replication threads run).
//!
//! After the clock stops, the re-pointed replica is checked to hold every row. Prints a
//! table and writes `bench/failover.json`.
//!
//! Usage: `bench-failover --agent target/release/guest-agent [--runs 5] [--rows 1000]
//! [--out bench/failover.json]` (run through `tools/bench-failover.sh`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use guest_agent_e2e::mariadb::{Member, describe, gtid_reached, mariadb_prepare_args};
use guest_agent_e2e::services::postgres::is_alive;
use mysql_async::prelude::Queryable;
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

/// Target for the whole failover (kill → writable and re-pointed).
const TARGET_MS: f64 = 5000.0;
const APP_PASSWORD: &str = "App-Bench-Pass-1";

/// Measures MariaDB failover through the agents: primary killed to new primary writable and the other replica re-pointed.
#[derive(Debug, clap::Parser)]
#[command(name = "bench-failover")]
struct Args {
    /// The agent binary to measure (e.g. target/release/guest-agent).
    #[arg(long, value_parser = guest_agent_e2e::bench_agent)]
    agent: PathBuf,
    /// Failovers to time.
    #[arg(long, default_value_t = 5, value_parser = positive_usize)]
    runs: usize,
    /// Rows written before each failover.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    rows: u32,
    /// Where the figures go as JSON.
    #[arg(long, default_value_os_t = guest_agent_e2e::workspace_root().join("bench").join("failover.json"))]
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

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Milestones of one failover, from the kill.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// The primary's server is gone.
    killed: Duration,
    /// Both replicas' positions read and the candidate chosen.
    chosen: Duration,
    /// Candidate promoted (and the other detached).
    promoted: Duration,
    /// First write on the new primary committed.
    writable: Duration,
    /// The other replica attached to the new primary and replicating.
    repointed: Duration,
}

/// The row count of `app.t` on a member.
async fn count(m: &Member) -> Result<u64> {
    let text = m
        .direct()
        .admin_value("SELECT COUNT(*) FROM app.t")
        .await
        .context("no count")?;
    Ok(text.parse()?)
}

async fn one_run(args: &Args, n: usize) -> Result<Run> {
    let base = u32::try_from(n)? * 10 + 1000;
    let mut primary = Member::new("primary", base + 1);
    let mut ra = Member::new("r1", base + 2);
    let mut rb = Member::new("r2", base + 3);
    let bin = Some(args.agent.as_path());
    let primary_args = mariadb_prepare_args(
        json!([{"_name": "app"}]),
        json!([{"_name": "app", "_password": APP_PASSWORD, "_host": "%",
                "_databases": [{"_name": "app"}]}]),
    );
    let empty = mariadb_prepare_args(json!([]), json!([]));
    tokio::join!(
        primary.start_prepared(bin, primary_args),
        ra.start_prepared(bin, empty.clone()),
        rb.start_prepared(bin, empty),
    );
    for r in [&ra, &rb] {
        let snap = primary.replication_snapshot(&r.name).await;
        r.attach_replica(&snap).await;
    }

    // Some data, replicated to both.
    let mut app = primary
        .direct()
        .login("app", APP_PASSWORD, Some("app"))
        .await;
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40))")
        .await
        .map_err(|e| anyhow::anyhow!("create table: {}", describe(&e)))?;
    for chunk in (1..=args.rows).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'row {i}')")).collect();
        app.query_drop(format!("INSERT INTO t VALUES {}", values.join(",")))
            .await
            .map_err(|e| anyhow::anyhow!("insert: {}", describe(&e)))?;
    }
    let _ = app.disconnect().await;
    let txn = primary.latest_txn_id().await;
    tokio::join!(ra.wait_for_txn(&txn), rb.wait_for_txn(&txn));

    // The failover, timed from the kill.
    // SIGKILL to the primary's server and agent; the clock starts at the first signal. The
    // failover begins once the server is gone (the agent is reaped afterwards).
    let server = primary
        .env
        .server_pid()
        .context("the primary's server is not running")?;
    let t0 = Instant::now();
    kill(server, Signal::SIGKILL)?;
    if let Some(agent) = primary.agent.as_ref() {
        agent.signal(Signal::SIGKILL);
    }
    while is_alive(server) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let killed = t0.elapsed();
    let (pa, pb) = tokio::join!(ra.position(), rb.position());
    let errant_free = |m: &Member, p: &[guest_agent_e2e::mariadb::Gtid]| {
        p.iter().all(|g| g.server != m.server_id)
    };
    let candidates: Vec<(&Member, _)> = [(&ra, pa), (&rb, pb)]
        .into_iter()
        .filter(|(m, p)| errant_free(m, p))
        .collect();
    let Some(best) = candidates
        .iter()
        .position(|(_, p)| candidates.iter().all(|(_, q)| gtid_reached(p, q)))
    else {
        bail!("no replica is ahead of the others");
    };
    let new_primary = candidates[best].0;
    let other = if std::ptr::eq(new_primary, &ra) {
        &rb
    } else {
        &ra
    };
    let chosen = t0.elapsed();
    tokio::join!(
        new_primary
            .client
            .call("promote_to_replica_source", json!({})),
        other.detach_replica(true),
    );
    let promoted = t0.elapsed();
    let mut w = new_primary
        .direct()
        .login("app", APP_PASSWORD, Some("app"))
        .await;
    w.exec_drop(
        "INSERT INTO t VALUES (?, ?)",
        (args.rows + 1, "after failover"),
    )
    .await
    .map_err(|e| anyhow::anyhow!("write on the new primary: {}", describe(&e)))?;
    let writable = t0.elapsed();
    let ctx = new_primary.replica_context().await;
    other.attach_replica(&ctx).await;
    let repointed = t0.elapsed();
    let _ = w.disconnect().await;
    if let Some(agent) = primary.agent.as_mut() {
        agent.wait_exit(Duration::from_secs(30)).await;
    }

    // Untimed: the re-pointed replica holds every row.
    let txn = new_primary.latest_txn_id().await;
    other.wait_for_txn(&txn).await;
    let want = u64::from(args.rows) + 1;
    for m in [new_primary, other] {
        let got = count(m).await?;
        if got != want {
            bail!("{} holds {got} rows, expected {want}", m.name);
        }
    }
    Ok(Run {
        killed,
        chosen,
        promoted,
        writable,
        repointed,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    guest_agent_e2e::init_crypto();
    let args = <Args as clap::Parser>::parse();
    guest_agent_e2e::mariadb::require_mariadb();
    let mut runs = Vec::with_capacity(args.runs);
    for n in 0..args.runs {
        let r = one_run(&args, n).await?;
        eprintln!(
            "run {}: killed {:.1} ms, chosen {:.1} ms, promoted {:.1} ms, writable {:.1} ms, \
             re-pointed {:.1} ms",
            n + 1,
            ms(r.killed),
            ms(r.chosen),
            ms(r.promoted),
            ms(r.writable),
            ms(r.repointed)
        );
        runs.push(r);
    }
    let col = |f: fn(&Run) -> Duration| runs.iter().map(|r| ms(f(r))).collect::<Vec<f64>>();
    let killed = col(|r| r.killed);
    let chosen = col(|r| r.chosen);
    let promoted = col(|r| r.promoted);
    let writable = col(|r| r.writable);
    let total = col(|r| r.repointed);
    let worst = total.iter().copied().fold(0.0, f64::max);
    let med = median(total.clone());
    let met = worst < TARGET_MS;

    println!();
    println!(
        "MariaDB failover through the agents ({})",
        args.agent.display()
    );
    println!(
        "{:<58} {:>10} {:>10} {:>8}",
        "measure (from SIGKILL of the primary)", "median", "worst", ""
    );
    println!("{}", "-".repeat(90));
    let line = |name: &str, v: &[f64]| {
        println!(
            "{:<58} {:>7.1} ms {:>7.1} ms",
            name,
            median(v.to_vec()),
            v.iter().copied().fold(0.0, f64::max)
        );
    };
    line("primary's server gone", &killed);
    line("positions read, candidate chosen", &chosen);
    line("candidate promoted, other detached", &promoted);
    line("new primary writable (first write committed)", &writable);
    println!(
        "{:<58} {:>7.1} ms {:>7.1} ms {:>8}",
        format!("other replica re-pointed: failover done (target < {TARGET_MS:.0} ms)"),
        med,
        worst,
        if met { "ok" } else { "MISSED" }
    );
    println!(
        "runs: {}, {} rows replicated before each kill",
        args.runs, args.rows
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1);
    let rounded = |v: &[f64]| v.iter().map(|x| r1(*x)).collect::<Vec<f64>>();
    let results: Value = json!({
        "measured_at_unix": now,
        "machine": {"cpus": cpus, "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
        "agent": args.agent.display().to_string(),
        "setup": format!(
            "release build; MariaDB 10.11, three servers on 127.0.0.1, each with its own agent \
             (HTTPS, mutual TLS); primary + two replicas attached through the agents; {} rows \
             replicated before the primary's server and agent are SIGKILLed",
            args.rows
        ),
        "steps": [
            "get_latest_txn_id on both replicas, choose the most advanced without errant GTIDs",
            "promote_to_replica_source on the candidate || detach_replica(for_failover) on the other",
            "first write on the new primary as the application user",
            "get_replica_context on the new primary, attach_replica on the other",
        ],
        "failover_ms": {
            "median": r1(med),
            "worst": r1(worst),
            "runs": rounded(&total),
            "target_lt": TARGET_MS,
            "met": met,
        },
        "milestones_ms": {
            "killed": rounded(&killed),
            "chosen": rounded(&chosen),
            "promoted": rounded(&promoted),
            "writable": rounded(&writable),
            "repointed": rounded(&total),
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
