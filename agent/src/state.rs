//! The agent's own persistent state: whether the datastore was prepared (marker files in the
//! state directory, as Trove keeps `.guestagent.prepare.end`), and transient phases that
//! override the datastore's own status while an operation runs (building, restarting,
//! promoting a replica).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use guest_agent_api::DatastoreStatus;
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
    transient: Mutex<Option<DatastoreStatus>>,
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
            transient: Mutex::new(None),
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

    /// The status an operation in progress reports instead of the datastore's own.
    pub fn transient(&self) -> Option<DatastoreStatus> {
        self.transient.lock().ok().and_then(|t| *t)
    }

    /// Reports `status` until the returned guard is dropped (when the operation ends, however
    /// it ends).
    pub fn enter(&self, status: DatastoreStatus) -> TransientGuard<'_> {
        if let Ok(mut t) = self.transient.lock() {
            *t = Some(status);
        }
        self.changed.notify_one();
        TransientGuard { state: self }
    }

    /// Wakes the heartbeat loop (the datastore changed state under an operation).
    pub fn poke(&self) {
        self.changed.notify_one();
    }
}

/// Clears the transient status on drop.
#[derive(Debug)]
pub struct TransientGuard<'a> {
    state: &'a AgentState,
}

impl Drop for TransientGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.state.transient.lock() {
            *t = None;
        }
        self.state.changed.notify_one();
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

    #[test]
    fn transient_status_lasts_as_long_as_its_guard() {
        let d = tempfile::tempdir().unwrap();
        let s = AgentState::load(d.path());
        assert_eq!(s.transient(), None);
        {
            let _g = s.enter(DatastoreStatus::PromotingReplica);
            assert_eq!(s.transient(), Some(DatastoreStatus::PromotingReplica));
        }
        assert_eq!(s.transient(), None);
    }
}
