//! Logging setup and the agent's metrics, rendered in the Prometheus text format.
//!
//! Metrics are few and fixed (per-method operation counts and durations, heartbeat outcomes,
//! datastore status), so a small registry here is clearer than a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use guest_agent_api::DatastoreStatus;

use crate::config::{LogFormat, LogSection};

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Byte counts of backup work, by phase (`backup`, `restore`, `verify`).
#[derive(Debug, Default, Clone, Copy)]
struct Transfer {
    /// Raw bytes (tool output or input), stored bytes (uploaded or downloaded).
    raw: u64,
    stored: u64,
}

#[derive(Debug, Default)]
struct Inner {
    ops: BTreeMap<(String, &'static str), Histogram>,
    heartbeats: BTreeMap<&'static str, u64>,
    status: Option<DatastoreStatus>,
    /// Finished backup work: totals, by phase.
    transfer_total: BTreeMap<&'static str, Transfer>,
    /// The running operation's bytes so far, by phase (zero when none runs).
    transfer_now: BTreeMap<&'static str, Transfer>,
    /// Finished backup operations, by phase and outcome.
    backup_ops: BTreeMap<(&'static str, &'static str), u64>,
    /// Rate of the last finished operation (raw bytes per second), by phase.
    last_rate: BTreeMap<&'static str, u64>,
}

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one finished operation.
    pub fn observe(&self, method: &str, ok: bool, seconds: f64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let h = inner
            .ops
            .entry((method.to_owned(), if ok { "ok" } else { "error" }))
            .or_default();
        h.count += 1;
        h.sum += seconds;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
    }

    /// Records one heartbeat attempt.
    pub fn heartbeat(&self, ok: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner
                .heartbeats
                .entry(if ok { "ok" } else { "error" })
                .or_default() += 1;
        }
    }

    /// Records the progress of the running backup, restore or verification.
    pub fn backup_progress(&self, phase: &'static str, raw: u64, stored: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.transfer_now.insert(phase, Transfer { raw, stored });
        }
    }

    /// Records a finished backup, restore or verification.
    pub fn backup_finished(
        &self,
        phase: &'static str,
        ok: bool,
        raw: u64,
        stored: u64,
        bytes_per_sec: u64,
    ) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.transfer_now.insert(phase, Transfer::default());
            let t = inner.transfer_total.entry(phase).or_default();
            t.raw += raw;
            t.stored += stored;
            *inner
                .backup_ops
                .entry((phase, if ok { "ok" } else { "error" }))
                .or_default() += 1;
            if ok {
                inner.last_rate.insert(phase, bytes_per_sec);
            }
        }
    }

    /// Records the datastore status last reported.
    pub fn set_status(&self, status: DatastoreStatus) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.status = Some(status);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let Ok(inner) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        out.push_str(
            "# HELP guest_agent_operations_total Operations finished, by method and outcome.\n",
        );
        out.push_str("# TYPE guest_agent_operations_total counter\n");
        for ((m, o), h) in &inner.ops {
            let _ = writeln!(
                out,
                "guest_agent_operations_total{{method=\"{m}\",outcome=\"{o}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP guest_agent_operation_duration_seconds Operation durations.\n");
        out.push_str("# TYPE guest_agent_operation_duration_seconds histogram\n");
        for ((m, o), h) in &inner.ops {
            let labels = format!("method=\"{m}\",outcome=\"{o}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "guest_agent_operation_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "guest_agent_operation_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "guest_agent_operation_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "guest_agent_operation_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out.push_str("# HELP guest_agent_heartbeats_total Heartbeats sent, by outcome.\n");
        out.push_str("# TYPE guest_agent_heartbeats_total counter\n");
        for (o, n) in &inner.heartbeats {
            let _ = writeln!(out, "guest_agent_heartbeats_total{{outcome=\"{o}\"}} {n}");
        }
        out.push_str(
            "# HELP guest_agent_datastore_status Datastore status last reported (1 = current).\n",
        );
        out.push_str("# TYPE guest_agent_datastore_status gauge\n");
        for st in DatastoreStatus::ALL {
            let v = u8::from(inner.status == Some(st));
            let _ = writeln!(
                out,
                "guest_agent_datastore_status{{status=\"{}\"}} {v}",
                st.description()
            );
        }
        out.push_str(
            "# HELP guest_agent_backup_operations_total Backups, restores and verifications \
             finished, by phase and outcome.\n",
        );
        out.push_str("# TYPE guest_agent_backup_operations_total counter\n");
        for ((p, o), n) in &inner.backup_ops {
            let _ = writeln!(
                out,
                "guest_agent_backup_operations_total{{phase=\"{p}\",outcome=\"{o}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP guest_agent_backup_bytes_total Bytes moved by finished backup work, by phase \
             and kind (raw = the tool's side, stored = the object store's side).\n",
        );
        out.push_str("# TYPE guest_agent_backup_bytes_total counter\n");
        for (p, t) in &inner.transfer_total {
            let _ = writeln!(
                out,
                "guest_agent_backup_bytes_total{{phase=\"{p}\",kind=\"raw\"}} {}",
                t.raw
            );
            let _ = writeln!(
                out,
                "guest_agent_backup_bytes_total{{phase=\"{p}\",kind=\"stored\"}} {}",
                t.stored
            );
        }
        out.push_str(
            "# HELP guest_agent_backup_progress_bytes Bytes moved so far by the running backup \
             work, by phase and kind.\n",
        );
        out.push_str("# TYPE guest_agent_backup_progress_bytes gauge\n");
        for (p, t) in &inner.transfer_now {
            let _ = writeln!(
                out,
                "guest_agent_backup_progress_bytes{{phase=\"{p}\",kind=\"raw\"}} {}",
                t.raw
            );
            let _ = writeln!(
                out,
                "guest_agent_backup_progress_bytes{{phase=\"{p}\",kind=\"stored\"}} {}",
                t.stored
            );
        }
        out.push_str(
            "# HELP guest_agent_backup_last_rate_bytes_per_second Raw throughput of the last \
             successful operation, by phase.\n",
        );
        out.push_str("# TYPE guest_agent_backup_last_rate_bytes_per_second gauge\n");
        for (p, r) in &inner.last_rate {
            let _ = writeln!(
                out,
                "guest_agent_backup_last_rate_bytes_per_second{{phase=\"{p}\"}} {r}"
            );
        }
        out
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over the configured level.
pub fn init_logging(cfg: &LogSection) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal; and a failed log write (stderr gone, a closed pipe) must never
    // become a panic that kills the agent or its signal handling.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe("rpc_ping", true, 0.0007);
        m.observe("rpc_ping", true, 0.02);
        m.observe("get_user", false, 2.0);
        m.heartbeat(true);
        m.set_status(DatastoreStatus::Healthy);
        let t = m.render();
        assert!(t.contains("guest_agent_operations_total{method=\"rpc_ping\",outcome=\"ok\"} 2"));
        assert!(t.contains("guest_agent_operation_duration_seconds_bucket{method=\"rpc_ping\",outcome=\"ok\",le=\"0.001\"} 1"));
        assert!(t.contains("guest_agent_operation_duration_seconds_bucket{method=\"rpc_ping\",outcome=\"ok\",le=\"+Inf\"} 2"));
        assert!(
            t.contains("guest_agent_operations_total{method=\"get_user\",outcome=\"error\"} 1")
        );
        assert!(t.contains("guest_agent_datastore_status{status=\"healthy\"} 1"));
        assert!(t.contains("guest_agent_datastore_status{status=\"shutdown\"} 0"));
        assert!(t.contains("guest_agent_heartbeats_total{outcome=\"ok\"} 1"));
        m.backup_progress("backup", 10, 4);
        assert!(t.len() < m.render().len());
        assert!(
            m.render()
                .contains("guest_agent_backup_progress_bytes{phase=\"backup\",kind=\"raw\"} 10")
        );
        m.backup_finished("backup", true, 100, 40, 7);
        let t = m.render();
        assert!(t.contains("guest_agent_backup_bytes_total{phase=\"backup\",kind=\"stored\"} 40"));
        assert!(t.contains("guest_agent_backup_progress_bytes{phase=\"backup\",kind=\"raw\"} 0"));
        assert!(
            t.contains("guest_agent_backup_operations_total{phase=\"backup\",outcome=\"ok\"} 1")
        );
        assert!(t.contains("guest_agent_backup_last_rate_bytes_per_second{phase=\"backup\"} 7"));
    }
}
