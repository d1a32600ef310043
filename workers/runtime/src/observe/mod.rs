//! What a worker shows about itself: Prometheus metrics, health and readiness over HTTP.

pub mod health;
pub mod metrics;
pub mod probe;
pub mod server;

pub use health::Health;
pub use metrics::Metrics;
