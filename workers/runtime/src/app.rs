//! What a worker's `main` calls: parse flags, set up logging, pick the broker, run until
//! ctrl-c or SIGTERM.

use clap::Parser;

use crate::{
    broker::UseTransport, config::WorkerArgs, console, handler::Handler, observe::otlp, shutdown, transport::Transport,
    worker,
};

/// Run `handler` as a worker process configured by flags and environment variables, on
/// a runtime of `--runtime-threads` threads. Without `--broker` it runs on the embedded
/// in-memory broker with the dev console.
pub fn main<H: Handler>(handler: H) -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = runtime_threads(args.processing.runtime_threads, cores);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    let outcome = runtime.block_on(async {
        let settings = args.settings(H::NAME)?;
        // The console owns the terminal: only warnings and errors are logged beside it.
        let default_level = if settings.broker.is_memory() { "warn" } else { "info" };
        init_logging(&args.observability.log_format, default_level);
        let outcome = run(settings, handler).await;
        otlp::flush();
        outcome
    });
    // The process ends here, not in the runtime's teardown: a broker client still closing
    // (on the thread of `close_within`, or held by a blocking call the broker does not
    // answer) would hold that teardown for up to librdkafka's session timeout. What it
    // did not commit is delivered again.
    if let Err(error) = &outcome {
        eprintln!("Error: {error:?}");
    }
    std::process::exit(if outcome.is_ok() { 0 } else { 1 });
}

/// The runtime's threads: as chosen, or one fewer than the process's `cores` (at least
/// one). The broker client does its network and protocol work on threads of its own
/// (librdkafka's per broker and its producer's poller; lapin's I/O loop): with a runtime
/// thread on every core, the runtime's threads keep parking and being woken as
/// deliveries pass between tasks, which cost a 2-core worker more CPU per message than
/// the second thread added (docs/benchmarks.md, "Runtime threads").
fn runtime_threads(chosen: Option<std::num::NonZeroUsize>, cores: usize) -> usize {
    chosen.map_or_else(|| cores.saturating_sub(1).max(1), std::num::NonZeroUsize::get)
}

/// How long closing the broker clients may take after the shutdown grace (Kafka: the
/// consumer commits what is finished and leaves its group, then the producer closes).
/// librdkafka bounds it only by the session timeout while the broker is unreachable.
/// One budget for both: the consumer's close has most of it (the transport cuts it off
/// a little before), the producer what is left.
pub const CLOSE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Run the worker, then close its broker clients within [`CLOSE_BOUND`].
async fn run<H: Handler>(settings: crate::Settings, handler: H) -> anyhow::Result<()> {
    if settings.broker.is_memory() {
        return console::run(settings, handler).await;
    }
    let name = format!("{} {}", settings.worker, settings.instance);
    settings.broker.clone().run(&name, Worker { settings, handler }).await?
}

/// A worker to run on whichever transport the broker is.
struct Worker<H> {
    settings: crate::Settings,
    handler: H,
}

impl<H: Handler> UseTransport for Worker<H> {
    type Output = anyhow::Result<()>;

    async fn with<T: Transport>(self, transport: T) -> Self::Output {
        // The promise (docs/delivery.md): a stop ends within the grace plus the close
        // bound of the signal, whatever part of it the subscription's close took.
        let grace = self.settings.shutdown_grace;
        let signalled = std::sync::Arc::new(std::sync::OnceLock::new());
        let signal = {
            let signalled = std::sync::Arc::clone(&signalled);
            // Installed now: a SIGTERM while the worker declares and subscribes is kept.
            let signal = shutdown::signal();
            async move {
                signal.await;
                let _ = signalled.set(tokio::time::Instant::now());
            }
        };
        let outcome = on_runtime_thread(worker::run(self.settings, transport.clone(), self.handler, signal)).await;
        // Stopped without a signal (a broker failure): the close bound from now.
        let deadline =
            signalled.get().map_or_else(|| tokio::time::Instant::now() + CLOSE_BOUND, |at| *at + grace + CLOSE_BOUND);
        close_within(deadline.saturating_duration_since(tokio::time::Instant::now()), transport).await;
        outcome
    }
}

/// Drop the last handle of a transport (which closes its connections) on a thread of its
/// own, waiting at most `bound`.
async fn close_within<T: Send + 'static>(bound: std::time::Duration, transport: T) {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(transport);
        let _ = done.send(());
    });
    if tokio::time::timeout(bound, finished).await.is_err() {
        tracing::warn!(?bound, "Closing the broker connections takes too long; exiting without waiting.");
    }
}

/// Run the consume loop as a task of the runtime, not on `main`'s thread: a task woken
/// from a runtime thread goes to that thread's own queue, one woken from outside goes
/// through the shared queue and wakes a sleeping thread, once per message.
async fn on_runtime_thread(
    worker: impl std::future::Future<Output = Result<(), worker::WorkerError>> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::spawn(worker).await??;
    Ok(())
}

/// Logs go to stderr: human-readable text, or one JSON object per line. `RUST_LOG`
/// filters (default `default_level`). Spans are exported over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init_logging(format: &str, default_level: &str) {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = if format == "json" { output.json().boxed() } else { output.boxed() };
    let result = tracing_subscriber::registry().with(filter).with(output).with(otlp::layer()).try_init();
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::runtime_threads;

    #[test]
    fn the_runtime_leaves_the_broker_client_a_core_unless_told_otherwise() {
        assert_eq!(runtime_threads(None, 1), 1);
        assert_eq!(runtime_threads(None, 2), 1);
        assert_eq!(runtime_threads(None, 8), 7);
        assert_eq!(runtime_threads(None, 0), 1, "an unknown count runs one thread");
        assert_eq!(runtime_threads(NonZeroUsize::new(4), 2), 4, "a chosen count is kept");
    }
}
