//! The production shutdown signal: ctrl-c or SIGTERM. Tests inject their own future.

use std::future::Future;

/// Completes on ctrl-c (SIGINT) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes while the worker is
/// still starting (declaring, subscribing) is then kept for the loop, instead of ending
/// the process by the signal's default action. Call it within the Tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let (interrupt, term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |stream: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match stream {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Cannot listen for {name}.");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(interrupt, "ctrl-c") => tracing::info!("Received ctrl-c."),
                () = wait(term, "SIGTERM") => tracing::info!("Received SIGTERM."),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::warn!(%error, "Cannot listen for ctrl-c.");
                std::future::pending::<()>().await;
            }
            tracing::info!("Received ctrl-c.");
        }
    }
}
