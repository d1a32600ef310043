//! The HTTP gateway process: `POST /process` → a greeter request on the broker → its
//! reply as the HTTP response. Flags: `gateway --help`.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use courier::{
    broker::{Broker, UseTransport},
    client::Client,
    config::ClientArgs,
    contract::naming,
    transport::Transport,
};

/// Flags of the gateway; the broker, queue and log flags are the workers' (`--broker`,
/// `--kafka-property`, `--queue`, …).
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
    client: ClientArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Requests go to --queue (default greeter.requests); the gateway's own reply queue
    // defaults to gateway.replies.
    let (queue, replies) = args
        .client
        .queues
        .names(naming::requests(<greeter::Greeter as courier::Handler>::NAME), naming::replies("gateway"))?;
    let mut broker = args.client.broker("gateway")?;
    if broker.is_memory() {
        anyhow::bail!("--broker is required: the gateway talks to workers through a broker");
    }
    let instance = args.client.observability.instance();
    if let Broker::Kafka(config) = &mut broker {
        // Each gateway reads every partition of its reply topic, in a group of its own.
        // It starts at the beginning (starting at the end could skip a reply that
        // arrives while the end is being looked up): keep reply topics' retention short.
        config.group = format!("{}-{instance}", config.group);
    }
    courier::app::init_logging(&args.client.observability.log_format, "info");
    let serve =
        Serve { replies: &replies, options: gateway::Options { queue, timeout: args.timeout }, listen: args.listen };
    let outcome =
        broker.run(&format!("gateway {instance}"), serve).await.map_err(anyhow::Error::from).and_then(|served| served);
    courier::observe::otlp::flush();
    outcome
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
