//! The per-operation context every driver method receives.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// What a driver method knows about the operation it serves.
///
/// Drivers must check [`OpContext::cancelled`] (or race against [`OpContext::cancel`]) at the
/// points where stopping is safe, and return [`Error::Cancelled`] there.
#[derive(Debug, Clone)]
pub struct OpContext {
    /// The request id (from the control plane's context, or generated).
    pub request_id: String,
    /// Fires on agent shutdown or when the caller gives up.
    pub cancel: CancellationToken,
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
}

impl OpContext {
    /// A context with a fresh token and no deadline.
    pub fn new(request_id: impl Into<String>) -> Self {
        Self {
            request_id: request_id.into(),
            cancel: CancellationToken::new(),
            deadline: None,
        }
    }

    /// A context whose cancellation follows `parent`.
    pub fn child_of(request_id: impl Into<String>, parent: &CancellationToken) -> Self {
        Self {
            request_id: request_id.into(),
            cancel: parent.child_token(),
            deadline: None,
        }
    }

    /// Sets a deadline `after` from now.
    #[must_use]
    pub fn with_timeout(mut self, after: Duration) -> Self {
        self.deadline = Some(Instant::now() + after);
        self
    }

    /// `Err(Error::Cancelled)` once cancellation was requested.
    pub fn cancelled(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}
