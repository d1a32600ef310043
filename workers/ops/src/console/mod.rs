//! `courier console`: the dead-letter and parking queues of some workers as web pages —
//! what fails, why, since when and how fast — and replay, park or purge from there,
//! always after a dry-run preview. Built on the same store and run loop as `courier dlq`
//! ([`crate::dlq`]), so the same rules hold: reading removes and reorders nothing, a
//! replay goes only to the worker's own work queue, the loop guard parks records replayed
//! too often, and every batch is settled atomically.
//!
//! Pages are rendered on the server ([`pages`]) with no script. Read-only unless started
//! with a token ([`access`]). One file per part: what is counted ([`scan`]), how a record
//! is shown ([`view`], [`proto`]), the queues and their actions ([`queues`], [`until`], [`jobs`]),
//! the addresses ([`routes`]).

pub mod access;
pub mod jobs;
pub mod pages;
pub mod proto;
pub mod queues;
pub mod routes;
pub mod scan;
pub mod until;
pub mod view;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use courier::{ClientArgs, contract::naming, observe::serve};

use self::{
    access::Access,
    proto::FieldNames,
    queues::Queue,
    routes::{Console, Settings},
};

/// `courier console …`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The workers whose dead-letter and parking queues to show (repeat the flag, or
    /// separate names with commas).
    #[arg(long = "worker", env = "COURIER_CONSOLE_WORKERS", value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// Where to serve the pages. The default keeps them on this machine.
    #[arg(long, env = "COURIER_CONSOLE_LISTEN", default_value = "127.0.0.1:9470")]
    listen: SocketAddr,
    /// Host names the console answers to besides this machine's own (localhost,
    /// 127.0.0.1, [::1], the --listen address): the name a proxy or a browser uses for it.
    #[arg(long = "public-host", env = "COURIER_CONSOLE_PUBLIC_HOSTS", value_delimiter = ',')]
    public_hosts: Vec<String>,
    /// The token an operator signs in with to replay, park or purge (at least 16
    /// characters). Without one the console is read-only.
    #[arg(long, env = "COURIER_CONSOLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An action's rate unless the operator picks another (records per second).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// The largest rate an operator may pick.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_rate: u32,
    /// Loop guard of replays from a dead-letter queue: records already replayed this many
    /// times are parked instead.
    #[arg(long, default_value_t = 3)]
    max_replays: u32,
    /// Records per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=500))]
    page_size: u16,
    /// A page reads a queue for at most this long (a longer queue is shown in part).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    scan_timeout: Duration,
    /// A worker's `.proto` file, to show its protobuf requests by field name:
    /// `WORKER=FILE` (message `Request`) or `WORKER=FILE:MESSAGE`.
    #[arg(long = "proto", value_parser = parse_proto)]
    protos: Vec<(String, PathBuf, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

/// The host names a request may name: this machine's, the listen address's, the operator's.
fn hosts(listen: SocketAddr, public: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
    if !listen.ip().is_unspecified() {
        hosts.push(match listen {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        });
    }
    hosts.extend(public.iter().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()));
    hosts
}

fn parse_proto(value: &str) -> Result<(String, PathBuf, String), String> {
    let (worker, file) = value.split_once('=').ok_or("expected WORKER=FILE or WORKER=FILE:MESSAGE")?;
    let (file, message) = match file.rsplit_once(':') {
        Some((file, message)) if !message.contains('/') => (file, message),
        _ => (file, "Request"),
    };
    Ok((worker.to_owned(), PathBuf::from(file), message.to_owned()))
}

/// Serve the console until a shutdown signal.
pub async fn main(args: ConsoleArgs) -> anyhow::Result<()> {
    courier::app::init_logging(&args.client.observability.log_format, "info");
    let overridden = args.client.queues.queue.is_some() || args.client.queues.replies.is_some();
    anyhow::ensure!(
        args.workers.len() == 1 || !overridden,
        "--queue and --replies name one worker's queues: give a single --worker with them"
    );
    let broker = args.client.broker(&args.workers[0])?;
    anyhow::ensure!(!broker.is_memory(), "--broker is required: the in-memory broker lives inside a worker process");
    let mut workers = args.workers.clone();
    workers.sort();
    workers.dedup();
    let mut queues = Vec::new();
    for worker in &workers {
        let (work_queue, _) = args.client.queues.names(naming::requests(worker), naming::replies(worker))?;
        queues.extend(Queue::of(worker, &work_queue).map(Arc::new));
    }
    let mut names = HashMap::new();
    for (worker, file, message) in &args.protos {
        let source = std::fs::read_to_string(file).with_context(|| format!("--proto {worker}={}", file.display()))?;
        let parsed =
            FieldNames::parse(&source, message).map_err(|e| anyhow::anyhow!("--proto {}: {e}", file.display()))?;
        names.insert(worker.clone(), parsed);
    }
    let access = Access::new(args.token.as_deref()).map_err(anyhow::Error::msg)?;
    let writable = access.writable();
    let console = Arc::new(Console {
        broker,
        queues,
        access,
        jobs: jobs::Jobs::default(),
        settings: Settings {
            rate: args.rate.min(args.max_rate),
            max_rate: args.max_rate,
            max_replays: args.max_replays,
            page_size: usize::from(args.page_size),
            scan_timeout: args.scan_timeout,
        },
        names,
        hosts: hosts(args.listen, &args.public_hosts),
        sign_in_gate: tokio::sync::Mutex::new(()),
    });
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("--listen {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, writable, workers = ?args.workers, "Console serving.");
    let bounds = serve::Bounds {
        header_timeout: Duration::from_secs(10),
        max_connections: serve::fitted_cap(256, serve::open_file_limit()),
    };
    serve::serve(listener, routes::router(console), bounds, courier::shutdown_signal()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_flags_name_a_worker_a_file_and_a_message() {
        assert_eq!(
            parse_proto("greeter=schemas/greeter/greeter.proto"),
            Ok(("greeter".into(), "schemas/greeter/greeter.proto".into(), "Request".into()))
        );
        assert_eq!(
            parse_proto("shop=/p/shop.proto:Order"),
            Ok(("shop".into(), "/p/shop.proto".into(), "Order".into()))
        );
        assert!(parse_proto("no-equals").is_err());
    }

    #[test]
    fn requests_must_name_a_host_the_console_knows() {
        use routes::host_allowed;
        let local = hosts("127.0.0.1:9470".parse().expect("an address"), &[]);
        assert!(host_allowed("127.0.0.1:9470", &local));
        assert!(host_allowed("LOCALHOST:9470", &local));
        assert!(host_allowed("127.0.0.1", &local));
        assert!(host_allowed("[::1]:9470", &local));
        assert!(!host_allowed("evil.example:9470", &local), "DNS rebinding");
        assert!(!host_allowed("", &local));
        assert!(!host_allowed("localhost.evil.example", &local));
        let public = hosts("0.0.0.0:9470".parse().expect("an address"), &["dlq.example.com".into()]);
        assert!(host_allowed("dlq.example.com", &public));
        assert!(!host_allowed("0.0.0.0:9470", &public));
        let v6 = hosts("[fe80::1]:9470".parse().expect("an address"), &[]);
        assert!(host_allowed("[fe80::1]:9470", &v6));
    }
}
