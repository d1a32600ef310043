//! Liveness and readiness: alive while the process serves HTTP; ready while the transport
//! is connected and consuming and the worker is not shutting down.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Shared between the worker loop and the HTTP server.
#[derive(Clone)]
pub struct Health {
    /// Asks the transport whether it is connected and consuming.
    transport_ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Set once consuming started; cleared when shutdown begins.
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("ready", &self.ready()).finish()
    }
}

impl Health {
    /// Readiness that also asks `transport_ready`.
    pub fn new(transport_ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self { transport_ready: Arc::new(transport_ready), running: Arc::new(AtomicBool::new(false)) }
    }

    /// The worker started (`true`) or began shutting down (`false`).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    /// Whether the worker should receive traffic.
    pub fn ready(&self) -> bool {
        self.running.load(Ordering::Relaxed) && (self.transport_ready)()
    }
}
