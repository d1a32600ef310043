//! What a worker shows about itself: Prometheus metrics, health and readiness over HTTP,
//! and OpenTelemetry traces.

mod health;
mod metrics;
pub(crate) mod otlp;
mod probe;
pub mod serve;
pub(crate) mod server;

pub use health::Health;
pub use metrics::Metrics;
pub(crate) use metrics::PartitionBacklog;
pub use otlp::flush;
pub use probe::get as probe;
pub use server::{Observed, routes};
