//! `courier`: the operators' command-line tool.

#[cfg(not(any(feature = "amqp", feature = "kafka")))]
compile_error!("the `courier` CLI works on a broker: build it with the `amqp` feature, the `kafka` feature, or both");

mod asyncapi;
mod console;
mod dlq;
mod topology;

use clap::{Parser, Subcommand};
use courier::{
    Connected, UseTransport, WorkerArgs,
    transport::{Topology, Transport, TransportError},
};

#[derive(Debug, Parser)]
#[command(version, about = "Courier operations: topology, dead-letter queues and their console, AsyncAPI documents.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Queues/topics of a worker.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Dead-letter and parking queues: stats, show, replay, park, purge.
    #[command(subcommand)]
    Dlq(dlq::command::DlqCommand),
    /// Serve the dead-letter console: workers' dead-letter and parking queues as web pages
    /// (failure groups, growth, records), and replay, park or purge after a preview.
    Console(console::ConsoleArgs),
    /// Print a worker's AsyncAPI 3.0 document: its channels, operations, messages in each
    /// codec and the contract's headers, from its published schemas and the queue names
    /// its flags give.
    Asyncapi(asyncapi::AsyncapiArgs),
    /// GET an HTTP URL; exit 0 on status 200, else 1 (container health checks).
    Probe {
        /// e.g. http://127.0.0.1:9464/healthz
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Check (changing nothing) that every queue/topic a worker with these flags uses
    /// exists and, on Kafka, is sized right; exit 1 when something is wrong.
    Lint {
        /// The worker's name (default queue names derive from it).
        #[arg(long, env = "COURIER_WORKER")]
        worker: String,
        #[command(flatten)]
        args: WorkerArgs,
    },
    /// Create (idempotently) every queue a worker with these flags uses; fails with a
    /// clear message when one exists with other settings.
    Declare {
        /// The worker's name (default queue names derive from it).
        #[arg(long, env = "COURIER_WORKER")]
        worker: String,
        #[command(flatten)]
        args: WorkerArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { url, timeout } => match courier::observe::probe(&url, timeout).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => {
                eprintln!("{url}: HTTP {status}: {}", body.trim());
                std::process::exit(1)
            }
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1)
            }
        },
        Command::Asyncapi(args) => {
            println!("{}", asyncapi::render(&args)?);
            Ok(())
        }
        Command::Console(args) => console::main(args).await,
        Command::Dlq(command) => {
            let code = dlq::command::main(command).await?;
            std::process::exit(code);
        }
        Command::Topology(TopologyCommand::Lint { worker, args }) => {
            courier::app::init_logging(&args.observability.log_format, "warn");
            let settings = args.settings(&worker)?;
            let topology = settings.topology();
            let findings = match settings.broker.connect("courier topology").await? {
                #[cfg(feature = "amqp")]
                Connected::Amqp(transport) => topology::amqp(&transport, &topology).await?,
                #[cfg(feature = "kafka")]
                Connected::Kafka(transport) => topology::kafka(&transport, &topology).await?,
                Connected::Memory(_) => {
                    anyhow::bail!("--broker is required: the in-memory broker has no topology to lint")
                }
            };
            for finding in &findings {
                println!("problem: {}: {}", finding.name, finding.problem);
            }
            if !findings.is_empty() {
                std::process::exit(1);
            }
            println!("ok: every queue/topic of {worker} is in place");
            Ok(())
        }
        Command::Topology(TopologyCommand::Declare { worker, args }) => {
            courier::app::init_logging(&args.observability.log_format, "warn");
            let settings = args.settings(&worker)?;
            let topology = settings.topology();
            if settings.broker.is_memory() {
                anyhow::bail!("--broker is required: the in-memory broker has no topology to declare")
            }
            settings.broker.run("courier topology", Declare(&topology)).await??;
            println!("declared: {}", topology.queue);
            for tier in &topology.retry_tiers {
                println!("declared: {} (delay {:?}, back to {})", tier.name, tier.delay, topology.queue);
            }
            for name in [&topology.dead_letter, &topology.parking, &topology.replies] {
                println!("declared: {name}");
            }
            Ok(())
        }
    }
}

/// Declare a topology on whichever transport the broker is.
struct Declare<'a>(&'a Topology);

impl UseTransport for Declare<'_> {
    type Output = Result<(), TransportError>;

    async fn with<T: Transport>(self, transport: T) -> Self::Output {
        transport.declare(self.0).await
    }
}
