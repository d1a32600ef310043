//! The HTTP gateway process: `POST /process` → a greeter request on the broker → its
//! reply as the HTTP response. Flags: `gateway --help`.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use courier::{Broker, Client, ClientArgs, contract::naming, observe::serve};

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
    /// How long a client may take to send a request's line and headers (from the connection's
    /// accept, or from the previous response); then the connection is closed.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// How long the whole body may take to arrive once the headers are in; then 408.
    #[arg(long, env = "GATEWAY_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// Connections open at once (at most the open-file limit less 64); beyond it new ones
    /// wait in the kernel's listen backlog until one closes.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (flag, value) in [("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)] {
        anyhow::ensure!(!value.is_zero(), "{flag} must be above 0");
    }
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
    let wanted = usize::try_from(args.max_connections)?;
    let max_connections = serve::fitted_cap(wanted, serve::open_file_limit());
    if max_connections < wanted {
        tracing::warn!(
            wanted,
            max_connections,
            "--max-connections lowered to fit the open-file limit (ulimit -n) less {}.",
            serve::RESERVED_FDS
        );
    }
    let options = gateway::Options { queue, timeout: args.timeout, body_timeout: args.body_timeout };
    let bounds = serve::Bounds { header_timeout: args.header_timeout, max_connections };
    let outcome = run(&broker, &format!("gateway {instance}"), &replies, options, bounds, args.listen).await;
    courier::observe::flush();
    outcome
}

/// Connect the client (`name` names its broker connection), then serve until a signal.
async fn run(
    broker: &Broker,
    name: &str,
    replies: &str,
    options: gateway::Options,
    bounds: serve::Bounds,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let client = Client::connect(broker, name, replies).await?;
    let router = gateway::router(client, options)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, ?bounds, "Gateway listening: POST /process.");
    serve::serve(listener, router, bounds, courier::shutdown_signal()).await;
    Ok(())
}
