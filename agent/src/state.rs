//! The agent's own persistent state: whether the datastore was prepared (marker files in the
//! state directory, as Trove keeps `.guestagent.prepare.end`), and transient phases that
//! override the datastore's own status (building, restarting).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Marker written when prepare starts.
const PREPARE_START: &str = "prepare.start";
/// Marker written when prepare succeeded.
const PREPARE_END: &str = "prepare.end";
/// Marker written (with the error text) when prepare failed.
const PREPARE_FAILED: &str = "prepare.failed";

/// Where preparation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Never prepared.
    New,
    /// Prepare is running.
    Building,
    /// Prepared; the datastore's own status applies.
    Prepared,
    /// Prepare failed with this message.
    Failed(String),
}

/// Persistent and transient agent state.
#[derive(Debug)]
pub struct AgentState {
    dir: PathBuf,
    phase: Mutex<Phase>,
    restarting: Mutex<bool>,
    /// Woken whenever the reportable status may have changed, so a heartbeat goes out at once.
    pub changed: Notify,
}

impl AgentState {
    /// Reads the markers in `dir` (which must exist). A prepare that was running when the
    /// agent died counts as failed: its outcome is unknown.
    pub fn load(dir: &Path) -> Self {
        let phase = if dir.join(PREPARE_END).exists() {
            Phase::Prepared
        } else if let Ok(msg) = std::fs::read_to_string(dir.join(PREPARE_FAILED)) {
            Phase::Failed(msg)
        } else if dir.join(PREPARE_START).exists() {
            Phase::Failed("the agent stopped while prepare was running".to_owned())
        } else {
            Phase::New
        };
        Self {
            dir: dir.to_owned(),
            phase: Mutex::new(phase),
            restarting: Mutex::new(false),
            changed: Notify::new(),
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.phase.lock().map(|p| p.clone()).unwrap_or(Phase::New)
    }

    fn set(&self, p: Phase) {
        if let Ok(mut cur) = self.phase.lock() {
            *cur = p;
        }
        self.changed.notify_one();
    }

    /// Marks the start of prepare (persisted).
    pub fn begin_prepare(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.dir.join(PREPARE_FAILED));
        write_marker(&self.dir.join(PREPARE_START), "")?;
        self.set(Phase::Building);
        Ok(())
    }

    /// Marks the end of prepare (persisted).
    pub fn end_prepare(&self, outcome: Result<(), String>) -> std::io::Result<()> {
        let r = match &outcome {
            Ok(()) => write_marker(&self.dir.join(PREPARE_END), ""),
            Err(msg) => write_marker(&self.dir.join(PREPARE_FAILED), msg),
        };
        self.set(match outcome {
            Ok(()) => Phase::Prepared,
            Err(msg) => Phase::Failed(msg),
        });
        r
    }

    /// Whether a restart is running.
    pub fn restarting(&self) -> bool {
        self.restarting.lock().map(|r| *r).unwrap_or(false)
    }

    /// Sets or clears the restarting phase.
    pub fn set_restarting(&self, on: bool) {
        if let Ok(mut r) = self.restarting.lock() {
            *r = on;
        }
        self.changed.notify_one();
    }

    /// Wakes the heartbeat loop (the datastore changed state under an operation).
    pub fn poke(&self) {
        self.changed.notify_one();
    }
}

fn write_marker(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_persist_phases() {
        let d = tempfile::tempdir().unwrap();
        let s = AgentState::load(d.path());
        assert_eq!(s.phase(), Phase::New);
        s.begin_prepare().unwrap();
        assert_eq!(
            AgentState::load(d.path()).phase(),
            Phase::Failed("the agent stopped while prepare was running".into())
        );
        s.end_prepare(Err("boom".into())).unwrap();
        assert_eq!(
            AgentState::load(d.path()).phase(),
            Phase::Failed("boom".into())
        );
        s.begin_prepare().unwrap();
        s.end_prepare(Ok(())).unwrap();
        assert_eq!(AgentState::load(d.path()).phase(), Phase::Prepared);
    }
}
