//! What a worker's `main` calls: parse flags, set up logging, pick the broker, run until
//! ctrl-c or SIGTERM.

use clap::Parser;

use crate::{
    config::{Broker, WorkerArgs},
    console,
    handler::Handler,
    shutdown,
    transport::{amqp::AmqpTransport, kafka::KafkaTransport},
    worker,
};

/// Run `handler` as a worker process configured by flags and environment variables.
/// Without `--broker` it runs on the embedded in-memory broker with the dev console.
pub async fn main<H: Handler>(handler: H) -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    let settings = args.settings(H::NAME)?;
    // The console owns the terminal: only warnings and errors are logged beside it.
    let default_level = if matches!(settings.broker, Broker::Memory) { "warn" } else { "info" };
    init_logging(&args.log_format, default_level);
    match settings.broker.clone() {
        Broker::Memory => console::run(settings, handler).await,
        Broker::Amqp(url) => {
            let name = format!("{} {}", settings.worker, settings.instance);
            let transport = AmqpTransport::connect(&url, &name).await?;
            worker::run(settings, transport, handler, shutdown::signal()).await?;
            Ok(())
        }
        Broker::Kafka(config) => {
            let transport = KafkaTransport::connect(config).await?;
            worker::run(settings, transport, handler, shutdown::signal()).await?;
            Ok(())
        }
    }
}

/// Logs go to stderr: human-readable text, or one JSON object per line. `RUST_LOG`
/// filters (default `default_level`).
pub fn init_logging(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if format == "json" { builder.json().try_init() } else { builder.try_init() };
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
}
