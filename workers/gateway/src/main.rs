//! The HTTP gateway process: `POST /process` → a greeter request on the broker → its
//! reply as the HTTP response. Flags: `gateway --help`.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use courier::{
    broker::{Broker, UseTransport},
    client::Client,
    config::WorkerArgs,
    transport::Transport,
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
    if settings.broker.is_memory() {
        anyhow::bail!("--broker is required: the gateway talks to workers through a broker");
    }
    let mut broker = settings.broker.clone();
    if let Broker::Kafka(config) = &mut broker {
        // Each gateway reads every partition of its reply topic, in a group of its own.
        // It starts at the beginning (starting at the end could skip a reply that
        // arrives while the end is being looked up): keep reply topics' retention short.
        config.group = format!("{}-{}", config.group, settings.instance);
    }
    let serve = Serve { replies: &settings.replies, options, listen };
    broker.run(&format!("gateway {}", settings.instance), serve).await?
}

/// The gateway on whichever transport the broker is.
struct Serve<'a> {
    replies: &'a str,
    options: gateway::Options,
    listen: SocketAddr,
}

impl UseTransport for Serve<'_> {
    type Output = anyhow::Result<()>;

    async fn with<T: Transport>(self, transport: T) -> Self::Output {
        serve(transport, self.replies, self.options, self.listen).await
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
