//! Benchmark of backups through the release agent, all on 127.0.0.1 against the Swift
//! all-in-one's S3 API (`tools/swift.sh`), encrypted with an instance key:
//!
//! - **backup**: wall time of `create_backup` (call to operation succeeded) of a ~1 GB
//!   PostgreSQL (`pgbench -i -s 70`, `pg_basebackup`) and a ~1 GB MariaDB (`mariabackup`),
//!   against the same tool by hand piped through `zstd -3 -T2` into `aws s3 cp -` (runs
//!   alternate between the two);
//! - **memory**: the agent's peak RSS while backing up (sampled every 20 ms, and its VmHWM),
//!   for the ~1 GB databases and for databases ten times smaller;
//! - **restore**: wall time of `prepare` with `backup_info` on a fresh agent until the
//!   operation succeeded and the datastore is healthy.
//!
//! Usage: `bench-backup --agent target/release/guest-agent [--runs N] [--pg-scale N]
//! [--maria-rows N] [--out bench/backup.json]` (run through `tools/bench-backup.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use guest_agent_e2e::backup::{s3_endpoint, s3_section, unique_container, with_backup};
use guest_agent_e2e::mariadb::{MariaEnv, mariadb_prepare_args};
use guest_agent_e2e::{Agent, PG_BIN, ROOT_PASSWORD, ROOT_USER, RpcClient, TestEnv, prepare_args};
use serde_json::{Value, json};

/// Target: agent backup wall time over the hand-made pipeline.
const TARGET_RATIO: f64 = 1.0;
/// Target: the agent's peak RSS during a backup, MiB.
const TARGET_RSS_MIB: f64 = 64.0;
/// The MariaDB account the benchmark loads data with.
const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "bench-Pass-1234";
const BENCH_DB: &str = "bench";

/// Measures backup and restore through the agent against a hand-made pipeline.
#[derive(Debug, clap::Parser)]
#[command(name = "bench-backup")]
struct Args {
    /// The agent binary to measure (e.g. target/release/guest-agent).
    #[arg(long, value_parser = guest_agent_e2e::bench_agent)]
    agent: PathBuf,
    /// Timed backups per datastore and way (agent, by hand), alternating.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Pgbench scale of the large PostgreSQL database (the small one is a tenth).
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u32).range(10..))]
    pg_scale: u32,
    /// Rows of the large MariaDB table (about 250 bytes each; the small one has a tenth).
    #[arg(long, default_value_t = 4_000_000, value_parser = clap::value_parser!(u64).range(10_000..))]
    maria_rows: u64,
    /// `backup.part_size_mib` of the agents (default: the agent's own default).
    #[arg(long)]
    part_size_mib: Option<u64>,
    /// `backup.upload_concurrency` of the agents (default: the agent's own default).
    #[arg(long)]
    upload_concurrency: Option<u64>,
    /// Benchmark only this datastore (`postgresql` or `mariadb`).
    #[arg(long, value_parser = ["postgresql", "mariadb"])]
    only: Option<String>,
    /// Where the figures go as JSON.
    #[arg(long, default_value_os_t = guest_agent_e2e::workspace_root().join("bench").join("backup.json"))]
    out: PathBuf,
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let k = kib as f64;
    r3(k / 1024.0)
}

/// `VmRSS` or `VmHWM` of `pid` in KiB.
fn proc_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Samples the RSS of `pid` every 20 ms until dropped; the peak is kept.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(k) = proc_kib(pid, "VmRSS") {
                    p.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Size of everything under `dir` in bytes.
fn du(dir: &Path) -> Result<u64> {
    let out = Command::new("du").arg("-sb").arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du output")
}

enum World {
    Pg(Box<TestEnv>),
    Maria(Box<MariaEnv>),
}

impl World {
    fn data_dir(&self) -> &Path {
        match self {
            Self::Pg(e) => &e.data_dir,
            Self::Maria(m) => &m.data_dir,
        }
    }
}

/// One datastore with its release agent.
struct Node {
    world: World,
    agent: Agent,
    client: RpcClient,
}

impl Node {
    async fn start(bin: &Path, maria: bool, backup: &Value, prepare: Option<Value>) -> Self {
        let (world, config) = if maria {
            let m = MariaEnv::new();
            let c = with_backup(m.config(), backup.clone(), None);
            (World::Maria(Box::new(m)), c)
        } else {
            let e = TestEnv::new();
            let c = with_backup(e.config(), backup.clone(), None);
            (World::Pg(Box::new(e)), c)
        };
        let env = match &world {
            World::Pg(e) => e.as_ref(),
            World::Maria(m) => &m.env,
        };
        let mut agent = Agent::spawn_bin(bin, env, &config);
        let client = env.client();
        agent.wait_healthz(&client).await;
        if let Some(args) = prepare {
            client.prepare(args).await;
            client.wait_status("healthy").await;
        }
        Self {
            world,
            agent,
            client,
        }
    }

    fn pid(&self) -> i32 {
        self.agent.pid().as_raw()
    }

    fn port(&self) -> u16 {
        match &self.world {
            World::Pg(e) => e.pg_port,
            World::Maria(m) => m.port,
        }
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

    /// Runs a tracked operation to its end; its result, or an error with the failure.
    async fn tracked(&self, method: &str, args: Value) -> Result<Value> {
        let started = self.call(method, args).await?;
        let id = started["operation"]["id"]
            .as_str()
            .context("operation id")?
            .to_owned();
        let op = self.client.wait_operation(&id).await;
        if op["state"] != "succeeded" {
            bail!("{method} did not succeed: {op}");
        }
        Ok(op["result"].clone())
    }
}

fn maria_prepare() -> Value {
    mariadb_prepare_args(
        json!([{"_name": BENCH_DB, "_character_set": null, "_collate": null}]),
        json!([{"_name": BENCH_USER, "_password": BENCH_PASSWORD, "_host": "%",
                "_databases": [{"_name": BENCH_DB}]}]),
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn fill_pg(node: &Node, scale: u32) -> Result<()> {
    run(
        Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &node.port().to_string(),
                "-U",
                ROOT_USER,
            ])
            .args(["-i", "-s", &scale.to_string(), "-q", "postgres"])
            .env("PGPASSWORD", ROOT_PASSWORD),
        "pgbench -i",
    )
}

/// A sysbench-like table: an integer key, a 120-character and a 60-character string of
/// digits and letters (compressible about as much as sysbench's).
fn fill_maria(node: &Node, rows: u64) -> Result<()> {
    let sql = format!(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, \
         pad CHAR(60) NOT NULL, KEY (k)) ENGINE=InnoDB; \
         INSERT INTO t SELECT seq, FLOOR(RAND()*{rows}), \
         CONCAT(MD5(seq), MD5(seq+1), MD5(RAND()), LEFT(MD5(RAND()), 24)), \
         CONCAT(MD5(RAND()), LEFT(SHA1(seq), 28)) FROM seq_1_to_{rows};"
    );
    run(
        Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", &node.port().to_string()])
            .args(["-u", BENCH_USER, &format!("-p{BENCH_PASSWORD}"), BENCH_DB])
            .args(["-e", &sql]),
        "filling MariaDB",
    )
}

/// One agent backup: wall seconds, the operation's result, the peak RSS (KiB) during it.
async fn agent_backup(node: &Node, id: &str) -> Result<(f64, Value, u64)> {
    let sampler = RssSampler::start(node.pid());
    let t0 = Instant::now();
    let result = node
        .tracked("create_backup", json!({"backup_info": {"id": id}}))
        .await?;
    let wall = t0.elapsed().as_secs_f64();
    Ok((wall, result, sampler.finish()))
}

/// The hand-made pipeline: `tool | zstd -3 -T2 | aws s3 cp - s3://bucket/key`.
fn by_hand(node: &Node, maria: bool, bucket: &str, key: &str) -> Result<f64> {
    let mut tool = if maria {
        let World::Maria(m) = &node.world else {
            bail!("not MariaDB")
        };
        let cnf = m.env.state_dir.join("datastore").join("backup-client.cnf");
        let scratch = m.base.join("by-hand-scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        let mut c = Command::new("mariabackup");
        c.arg(format!("--defaults-file={}", cnf.display()))
            .args(["--backup", "--stream=xbstream", "--parallel=2"])
            .arg(format!("--target-dir={}", scratch.display()))
            .arg(format!("--datadir={}", m.data_dir.display()));
        c
    } else {
        let World::Pg(e) = &node.world else {
            bail!("not PostgreSQL")
        };
        let mut c = Command::new(format!("{PG_BIN}/pg_basebackup"));
        c.arg("-h")
            .arg(&e.run_dir)
            .args(["-p", &e.pg_port.to_string(), "-U", "postgres", "-w"])
            .args(["-D", "-", "-Ft", "-X", "fetch", "-c", "fast"]);
        c
    };
    let t0 = Instant::now();
    let mut src = tool
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the backup tool")?;
    let mut zstd = Command::new("zstd")
        .args(["-3", "-T2", "-q", "-c"])
        .stdin(Stdio::from(src.stdout.take().context("tool stdout")?))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting zstd")?;
    let upload = Command::new("aws")
        .args(["--endpoint-url", &s3_endpoint(), "s3", "cp", "-"])
        .arg(format!("s3://{bucket}/{key}"))
        .stdin(Stdio::from(zstd.stdout.take().context("zstd stdout")?))
        .stdout(Stdio::null())
        .output()
        .context("running aws s3 cp")?;
    let (t, z) = (src.wait()?, zstd.wait()?);
    let wall = t0.elapsed().as_secs_f64();
    if !(t.success() && z.success() && upload.status.success()) {
        bail!(
            "the hand-made pipeline failed: tool {t}, zstd {z}, aws {}: {}",
            upload.status,
            String::from_utf8_lossy(&upload.stderr)
        );
    }
    Ok(wall)
}

fn ensure_bucket(bucket: &str) -> Result<()> {
    run(
        Command::new("aws").args([
            "--endpoint-url",
            &s3_endpoint(),
            "s3",
            "mb",
            &format!("s3://{bucket}"),
        ]),
        "aws s3 mb",
    )
}

fn remove_bucket(bucket: &str) {
    let _ = Command::new("aws")
        .args(["--endpoint-url", &s3_endpoint(), "s3", "rb", "--force"])
        .arg(format!("s3://{bucket}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Backups of one datastore (large and small) and a restore of the large one.
async fn bench_datastore(args: &Args, maria: bool, keys: &Path) -> Result<Value> {
    let name = if maria { "mariadb" } else { "postgresql" };
    let bucket = unique_container();
    let key = keys.join(format!("{name}.key"));
    run(
        Command::new(&args.agent).arg("gen-backup-key").arg(&key),
        "guest-agent gen-backup-key",
    )?;
    let mut section = s3_section(&bucket, Some(&key));
    // The agent's defaults unless told, not the tests' small parts.
    let obj = section.as_object_mut().context("backup section")?;
    obj.remove("part_size_mib");
    obj.remove("progress_interval_secs");
    if let Some(p) = args.part_size_mib {
        section["part_size_mib"] = json!(p);
    }
    if let Some(c) = args.upload_concurrency {
        section["upload_concurrency"] = json!(c);
    }
    let prepare = if maria {
        maria_prepare()
    } else {
        prepare_args()
    };

    // Small first: its agent's whole-life peak covers only the small database.
    let small = Node::start(&args.agent, maria, &section, Some(prepare.clone())).await;
    let t = Instant::now();
    if maria {
        fill_maria(&small, args.maria_rows / 10)?;
    } else {
        fill_pg(&small, args.pg_scale / 10)?;
    }
    println!(
        "{name}: small database filled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let small_size = du(small.world.data_dir())?;
    let idle_small = proc_kib(small.pid(), "VmRSS").unwrap_or(0);
    let (small_wall, small_result, small_peak) = agent_backup(&small, "small-1").await?;
    let small_hwm = proc_kib(small.pid(), "VmHWM").unwrap_or(0);
    println!(
        "{name}: small ({} MB) backup {small_wall:.2} s, peak RSS {} MiB",
        small_size / 1_000_000,
        mib(small_peak)
    );
    drop(small);

    let node = Node::start(&args.agent, maria, &section, Some(prepare.clone())).await;
    let t = Instant::now();
    if maria {
        fill_maria(&node, args.maria_rows)?;
    } else {
        fill_pg(&node, args.pg_scale)?;
    }
    println!(
        "{name}: large database filled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let size = du(node.world.data_dir())?;
    let idle = proc_kib(node.pid(), "VmRSS").unwrap_or(0);
    let hand_bucket = format!("{bucket}-hand");
    ensure_bucket(&hand_bucket)?;
    let (mut agent_walls, mut hand_walls, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = Value::Null;
    for i in 1..=args.runs {
        let (wall, result, peak) = agent_backup(&node, &format!("large-{i}")).await?;
        println!(
            "{name}: agent backup {i}: {wall:.2} s, {} MB raw, {} MB stored, peak RSS {} MiB",
            result["raw_bytes"].as_u64().unwrap_or(0) / 1_000_000,
            result["stored_bytes"].as_u64().unwrap_or(0) / 1_000_000,
            mib(peak)
        );
        agent_walls.push(wall);
        peaks.push(peak);
        last = result;
        let hand = by_hand(&node, maria, &hand_bucket, &format!("hand-{i}"))?;
        println!("{name}: by hand {i}: {hand:.2} s");
        hand_walls.push(hand);
    }
    let hwm = proc_kib(node.pid(), "VmHWM").unwrap_or(0);
    // What the agent keeps once its backups are done (the pipeline's memory should be gone).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc_kib(node.pid(), "VmRSS").unwrap_or(0);
    println!(
        "{name}: RSS idle {} MiB before the backups, {} MiB after them",
        mib(idle),
        mib(after)
    );
    remove_bucket(&hand_bucket);

    // Restore the last backup into a fresh instance.
    let fresh = Node::start(&args.agent, maria, &section, None).await;
    let mut restore_args = prepare.clone();
    restore_args["backup_info"] =
        json!({"location": last["location"], "checksum": last["checksum"]});
    let restore_sampler = RssSampler::start(fresh.pid());
    let t0 = Instant::now();
    fresh.tracked("prepare", restore_args).await?;
    fresh.client.wait_status("healthy").await;
    let restore_wall = t0.elapsed().as_secs_f64();
    let restore_peak = restore_sampler.finish();
    println!(
        "{name}: restore into a fresh instance {restore_wall:.2} s, peak RSS {} MiB",
        mib(restore_peak)
    );
    drop(fresh);
    drop(node);
    remove_bucket(&bucket);

    let raw = last["raw_bytes"].as_u64().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let raw_mb = raw as f64 / 1e6;
    let (agent_med, hand_med) = (median(&agent_walls), median(&hand_walls));
    Ok(json!({
        "datastore": name,
        "strategy": last["strategy"],
        "data_dir_bytes": size,
        "raw_bytes": raw,
        "stored_bytes": last["stored_bytes"],
        "agent_backup_s": agent_walls.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
        "by_hand_s": hand_walls.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
        "agent_backup_median_s": r3(agent_med),
        "by_hand_median_s": r3(hand_med),
        "ratio": r3(agent_med / hand_med),
        "agent_throughput_mb_s": r3(raw_mb / agent_med),
        "agent_idle_rss_mib": mib(idle),
        "agent_peak_rss_during_backup_mib": mib(peaks.iter().copied().max().unwrap_or(0)),
        "agent_vmhwm_mib": mib(hwm),
        "agent_rss_after_backups_mib": mib(after),
        "small": {
            "data_dir_bytes": small_size,
            "raw_bytes": small_result["raw_bytes"],
            "agent_backup_s": r3(small_wall),
            "agent_idle_rss_mib": mib(idle_small),
            "agent_peak_rss_during_backup_mib": mib(small_peak),
            "agent_vmhwm_mib": mib(small_hwm),
        },
        "restore_s": r3(restore_wall),
        "restore_throughput_mb_s": r3(raw_mb / restore_wall),
        "restore_agent_peak_rss_mib": mib(restore_peak),
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    guest_agent_e2e::init_crypto();
    let args = <Args as clap::Parser>::parse();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test:tester"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
        ("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
    ] {
        if std::env::var_os(k).is_none() {
            bail!("set {k}={v} (tools/bench-backup.sh does)");
        }
    }
    let keys = tempfile::tempdir()?;
    let mut results = Vec::new();
    for maria in [false, true] {
        let name = if maria { "mariadb" } else { "postgresql" };
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        results.push(bench_datastore(&args, maria, keys.path()).await?);
    }
    println!();
    println!(
        "| datastore | data | agent backup | by hand | ratio | peak RSS (1 GB / small) | restore |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &results {
        println!(
            "| {} | {} MB | {} s | {} s | {} (target ≤ {TARGET_RATIO}) | {} / {} MiB (target < {TARGET_RSS_MIB}) | {} s |",
            r["datastore"].as_str().unwrap_or("?"),
            r["data_dir_bytes"].as_u64().unwrap_or(0) / 1_000_000,
            r["agent_backup_median_s"],
            r["by_hand_median_s"],
            r["ratio"],
            r["agent_peak_rss_during_backup_mib"],
            r["small"]["agent_peak_rss_during_backup_mib"],
            r["restore_s"],
        );
    }
    let doc = json!({
        "when": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": format!("{} cores", std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1)),
        "store": "OpenStack Swift all-in-one, S3 API (s3api), 127.0.0.1",
        "agent_pipeline": format!(
            "zstd -3 (2 workers), AES-256-GCM, parts of {} MiB, {} in flight",
            args.part_size_mib.map_or_else(|| "default".to_owned(), |p| p.to_string()),
            args.upload_concurrency.map_or_else(|| "default".to_owned(), |c| c.to_string()),
        ),
        "by_hand_pipeline": "tool | zstd -3 -T2 | aws s3 cp -",
        "runs": args.runs,
        "targets": {"ratio_max": TARGET_RATIO, "peak_rss_mib_max": TARGET_RSS_MIB},
        "results": results,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("\nwrote {}", args.out.display());
    Ok(())
}
