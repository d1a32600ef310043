//! What a worker shows about itself: Prometheus metrics, health and readiness over HTTP,
//! and OpenTelemetry traces.

pub mod health;
pub mod metrics;
pub mod otlp;
pub mod probe;
pub mod serve;
pub mod server;

pub use health::Health;
pub use metrics::Metrics;
