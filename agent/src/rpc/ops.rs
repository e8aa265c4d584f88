//! Tracked long operations (`prepare`, backups, restores, verifications): an id, a state, and the outcome, kept
//! for the most recent operations so a control plane can poll them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

/// How many finished operations are remembered.
const KEEP: usize = 64;

/// Where an operation is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OpState {
    /// Still running.
    Running,
    /// Finished successfully.
    Succeeded {
        /// Its result.
        result: Value,
    },
    /// Failed.
    Failed {
        /// Error type.
        error_type: String,
        /// Error text.
        message: String,
    },
}

/// One tracked operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    /// Its id.
    pub id: String,
    /// The method that started it.
    pub method: String,
    /// The request id it came with.
    pub request_id: String,
    /// Start time, seconds since the epoch.
    pub started_at: f64,
    /// End time, once finished.
    pub finished_at: Option<f64>,
    /// Progress of a running backup, restore or verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    /// State and outcome.
    #[serde(flatten)]
    pub state: OpState,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The table of recent operations.
#[derive(Debug, Default)]
pub struct OperationTracker {
    ops: Mutex<VecDeque<Operation>>,
}

impl OperationTracker {
    /// Records a new running operation and returns it.
    pub fn begin(&self, method: &str, request_id: &str) -> Operation {
        let op = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            method: method.to_owned(),
            request_id: request_id.to_owned(),
            started_at: now(),
            finished_at: None,
            progress: None,
            state: OpState::Running,
        };
        if let Ok(mut ops) = self.ops.lock() {
            // Drop the oldest finished ones first; running ones are never forgotten.
            while ops.len() >= KEEP {
                match ops.iter().position(|o| o.state != OpState::Running) {
                    Some(i) => {
                        ops.remove(i);
                    }
                    None => break,
                }
            }
            ops.push_back(op.clone());
        }
        op
    }

    /// Records the end of operation `id`.
    pub fn finish(&self, id: &str, state: OpState) {
        if let Ok(mut ops) = self.ops.lock()
            && let Some(op) = ops.iter_mut().find(|o| o.id == id)
        {
            op.state = state;
            op.finished_at = Some(now());
        }
    }

    /// Records the progress of operation `id`.
    pub fn set_progress(&self, id: &str, progress: Value) {
        if let Ok(mut ops) = self.ops.lock()
            && let Some(op) = ops.iter_mut().find(|o| o.id == id)
        {
            op.progress = Some(progress);
        }
    }

    /// A snapshot of operation `id`.
    pub fn get(&self, id: &str) -> Option<Operation> {
        self.ops.lock().ok()?.iter().find(|o| o.id == id).cloned()
    }

    /// How many are running.
    pub fn running(&self) -> usize {
        self.ops
            .lock()
            .map(|o| o.iter().filter(|o| o.state == OpState::Running).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_finish_get() {
        let t = OperationTracker::default();
        let op = t.begin("prepare", "req-1");
        assert_eq!(t.running(), 1);
        t.finish(
            &op.id,
            OpState::Succeeded {
                result: Value::Null,
            },
        );
        let got = t.get(&op.id).unwrap();
        assert!(got.finished_at.is_some());
        assert_eq!(t.running(), 0);
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json["state"], "succeeded");
        assert!(t.get("nope").is_none());
    }

    #[test]
    fn keeps_a_bounded_history() {
        let t = OperationTracker::default();
        let first = t.begin("x", "r");
        t.finish(
            &first.id,
            OpState::Succeeded {
                result: Value::Null,
            },
        );
        for _ in 0..KEEP {
            let o = t.begin("x", "r");
            t.finish(
                &o.id,
                OpState::Succeeded {
                    result: Value::Null,
                },
            );
        }
        assert!(t.get(&first.id).is_none());
    }
}
