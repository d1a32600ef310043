//! The HTTP gateway process: `POST /process` → a greeter request on the broker → its
//! reply as the HTTP response. Flags: `gateway --help`.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use courier::{
    client::Client,
    config::{Broker, WorkerArgs},
    transport::{Transport, amqp::AmqpTransport, kafka::KafkaTransport},
};

/// Flags of the gateway; broker flags are the workers' (`--broker`, `--kafka-property`, …).
#[derive(Debug, Parser)]
#[command(version, about = "HTTP gateway: POST /process publishes a request and returns the worker's reply.")]
struct Args {
    /// Address to serve on (`/process`, `/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// How long to wait for a reply before answering 504 (also sent as the request's deadline).
    #[arg(long, env = "GATEWAY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The gateway's own reply queue defaults to gateway.replies; requests go to --queue
    // (default greeter.requests).
    let mut settings = args.worker.settings("gateway")?;
    if args.worker.queue.is_none() {
        settings.queue = courier::contract::naming::requests(<greeter::Greeter as courier::Handler>::NAME);
    }
    courier::app::init_logging(&args.worker.log_format, "info");
    let options = gateway::Options { queue: settings.queue.clone(), timeout: args.timeout };
    let outcome = run(&settings, options, args.listen).await;
    courier::observe::otlp::flush();
    outcome
}

async fn run(settings: &courier::Settings, options: gateway::Options, listen: SocketAddr) -> anyhow::Result<()> {
    match settings.broker.clone() {
        Broker::Memory => anyhow::bail!("--broker is required: the gateway talks to workers through a broker"),
        Broker::Amqp(url) => {
            let transport = AmqpTransport::connect(&url, &format!("gateway {}", settings.instance)).await?;
            serve(transport, &settings.replies, options, listen).await
        }
        Broker::Kafka(mut config) => {
            // Each gateway reads every partition of its reply topic, in a group of its own.
            // It starts at the beginning (starting at the end could skip a reply that
            // arrives while the end is being looked up): keep reply topics' retention short.
            config.group = format!("{}-{}", config.group, settings.instance);
            let transport = KafkaTransport::connect(config).await?;
            serve(transport, &settings.replies, options, listen).await
        }
    }
}

async fn serve<T: Transport>(
    transport: T,
    replies: &str,
    options: gateway::Options,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let client = Client::start(transport, replies).await?;
    let router = gateway::router(client, options)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "Gateway listening: POST /process.");
    axum::serve(listener, router).with_graceful_shutdown(courier::shutdown::signal()).await?;
    Ok(())
}
