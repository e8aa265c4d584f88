//! Shutdown signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second one
//! exits at once (as kube-runtime's `shutdown_on_signal` does).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code of a forced exit after a second signal (128 + SIGINT).
const FORCED_EXIT: i32 = 130;

/// Cancels `token` on the first signal and exits the process on the second.
pub fn install(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "Shutting down gracefully; a second signal exits at once."
        );
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(FORCED_EXIT);
    });
    Ok(())
}
