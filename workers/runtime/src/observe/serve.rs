//! The HTTP accept loop of a worker's endpoints and of the gateway: HTTP/1.1 with a cap on
//! open connections and a bound on the time a client may take to send a request's head,
//! so slow or idle clients cannot hold the process's file descriptors. (A body's bound is
//! its handler's: only the gateway's `/process` reads one.)

use std::{future::Future, io, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// File descriptors kept out of the connection cap: the broker's connections, the listener,
/// logs, the runtime's own.
pub const RESERVED_FDS: u64 = 64;

/// What one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Time to send a request's line and headers, counted from the accept or from the
    /// previous response: a connection that sends no complete head within it (an idle
    /// keep-alive one too) is closed without an answer.
    pub header_timeout: Duration,
    /// Connections open at once. At the cap the server stops accepting: new connections
    /// wait in the kernel's listen backlog, holding none of the process's descriptors,
    /// until one closes (HAProxy's `maxconn`, Go's `LimitListener`).
    pub max_connections: usize,
}

/// The connection cap that fits the soft open-file limit `limit` (`None`: unknown) with
/// [`RESERVED_FDS`] left over: `wanted`, or less when the limit is lower.
pub fn fitted_cap(wanted: usize, limit: Option<u64>) -> usize {
    match limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            wanted.min(room).max(1)
        }
        None => wanted,
    }
}

/// The soft limit on open files (`ulimit -n`), where the system says (Linux).
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Serve `router` on `listener` within `bounds` until `shutdown` completes; then stop
/// accepting, let each connection finish its request in progress, and return once all
/// are closed. Dropped instead, it closes the listener and tells the connections the
/// same, without waiting for them.
pub async fn serve(listener: TcpListener, router: Router, bounds: Bounds, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let stopping = CancellationToken::new();
    // An idle keep-alive connection would otherwise stay open, with the router's state,
    // until its client or the header timeout closes it.
    let _stop_if_dropped = stopping.clone().drop_guard();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first, then the accept: at the cap nothing is accepted.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    refused(error).await;
                    continue;
                }
            },
        };
        // The client's address, for handlers that log who asked (`ConnectInfo`).
        let service = TowerToHyperService::new(router.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer))));
        let stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout);
            let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "Connection closed.");
            }
        });
    }
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// After a failed accept: a client that gave up is nobody's concern; anything else (out of
/// descriptors, say) is logged and waited out for a second, as axum does.
async fn refused(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        tracing::error!(%error, "Cannot accept a connection; retrying in 1 s.");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_under_the_open_file_limit() {
        assert_eq!(fitted_cap(1024, None), 1024);
        assert_eq!(fitted_cap(1024, Some(20_000)), 1024);
        assert_eq!(fitted_cap(1024, Some(1024)), 960);
        assert_eq!(fitted_cap(8, Some(10)), 1);
    }

    #[test]
    fn the_open_file_limit_is_read_where_the_system_says() {
        if cfg!(target_os = "linux") {
            assert!(open_file_limit().is_some_and(|limit| limit > 0));
        }
    }
}
