//! `courier dlq …`: inspect, replay, park and purge dead-letter records.

use std::io::{IsTerminal, Write as _};

use clap::{Args, Subcommand};
use courier::{Broker, ClientArgs, contract::naming};
use indicatif::{ProgressBar, ProgressStyle};

use crate::dlq::{self, DeadLetterStore as _, Filter, Operation, RunOptions, Summary, report, run::Event};

/// Which queue of which worker.
#[derive(Debug, Args)]
pub struct Target {
    /// The worker's name (queue names derive from it).
    #[arg(long, env = "COURIER_WORKER")]
    worker: String,
    /// Work on the parking queue instead of the dead-letter queue.
    #[arg(long)]
    parking: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// How a changing command runs.
#[derive(Debug, Args)]
pub struct Change {
    #[command(flatten)]
    filter: Filter,
    /// Handle at most this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// At most this many records per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Print what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Records per atomic batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Count records by failure (fingerprint, kind, source, worker); removes and reorders nothing.
    Stats {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: Filter,
        /// JSON output, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print records: headers and pretty-printed payload; removes and reorders nothing.
    Show {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: Filter,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Republish records to the worker's work queue (failure headers stripped, replay
    /// count + 1); records replayed too often go to the parking queue instead, and records
    /// naming another queue as their source stay where they are unless --to is given.
    Replay {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        change: Change,
        /// Replay to this queue/topic instead of the worker's work queue: every matching
        /// record, whatever source it names.
        #[arg(long)]
        to: Option<String>,
        /// Loop guard: records already replayed this many times are parked (not applied
        /// when replaying the parking queue).
        #[arg(long, default_value_t = 3)]
        max_replays: u32,
    },
    /// Move records, unchanged, to the parking queue.
    Park {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        change: Change,
    },
    /// Delete records (asks first unless --yes).
    Purge {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        change: Change,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Run a `dlq` command; the exit code is 2 when some records were left in place because
/// they could not be handled or (replay) name another queue as their source.
pub async fn main(command: DlqCommand) -> anyhow::Result<i32> {
    match command {
        DlqCommand::Stats { target, filter, json } => {
            let (mut store, queue) = open(&target, false).await?;
            let mut stats = report::Stats::default();
            read_all(&mut store, &filter, None, |record| stats.add(record)).await?;
            store.close().await?;
            if json {
                println!("{}", stats.to_json(&queue));
            } else {
                print!("{}", stats.render(&queue));
            }
            Ok(0)
        }
        DlqCommand::Show { target, filter, limit, json } => {
            let (mut store, _) = open(&target, false).await?;
            let mut stdout = std::io::stdout().lock();
            read_all(&mut store, &filter, limit, |record| {
                let _ = if json {
                    writeln!(stdout, "{}", report::show_json(record))
                } else {
                    writeln!(stdout, "{}", report::show(record))
                };
            })
            .await?;
            store.close().await?;
            Ok(0)
        }
        DlqCommand::Replay { target, change, to, max_replays } => {
            let own = target.work_queue()?;
            if let Some(to) = &to {
                anyhow::ensure!(*to != target.queue()?, "--to must differ from the queue being replayed ({to})");
            }
            let parking = naming::parking(&own);
            let max_replays = (!target.parking).then_some(max_replays);
            change_records(&target, &change, &Operation::Replay { own, to, max_replays, parking }).await
        }
        DlqCommand::Park { target, change } => {
            anyhow::ensure!(!target.parking, "these records are parked already");
            let parking = naming::parking(&target.work_queue()?);
            change_records(&target, &change, &Operation::Park { parking }).await
        }
        DlqCommand::Purge { target, change, yes } => {
            if !yes && !change.dry_run {
                confirm_purge(&target, &change.filter)?;
            }
            change_records(&target, &change, &Operation::Purge).await
        }
    }
}

impl Target {
    fn broker(&self) -> anyhow::Result<Broker> {
        Ok(self.client.broker(&self.worker)?)
    }

    /// The worker's work queue.
    fn work_queue(&self) -> anyhow::Result<String> {
        let (queue, _) = self.client.queues.names(naming::requests(&self.worker), naming::replies(&self.worker))?;
        Ok(queue)
    }

    /// The queue this command reads: the dead-letter queue, or with `--parking` the parking queue.
    fn queue(&self) -> anyhow::Result<String> {
        let queue = self.work_queue()?;
        Ok(if self.parking { naming::parking(&queue) } else { naming::dead_letter(&queue) })
    }
}

/// The store and the name of the queue it reads.
async fn open(target: &Target, writable: bool) -> anyhow::Result<(dlq::AnyDeadLetterStore, String)> {
    let broker = target.broker()?;
    courier::app::init_logging(&target.client.observability.log_format, "warn");
    let queue = target.queue()?;
    Ok((dlq::open(&broker, &queue, writable).await?, queue))
}

/// Visit every record that matches (at most `limit`), leaving them all in place.
async fn read_all(
    store: &mut dlq::AnyDeadLetterStore,
    filter: &Filter,
    limit: Option<u64>,
    mut visit: impl FnMut(&dlq::Record),
) -> anyhow::Result<()> {
    let mut shown = 0;
    loop {
        let batch = store.next_batch(500).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for record in batch.iter().filter(|r| filter.matches(&r.message)) {
            if limit.is_some_and(|limit| shown >= limit) {
                return Ok(());
            }
            shown += 1;
            visit(record);
        }
    }
}

async fn change_records(target: &Target, change: &Change, operation: &Operation) -> anyhow::Result<i32> {
    let (mut store, queue) = open(target, !change.dry_run).await?;
    let progress = ProgressBar::new(store.pending().unwrap_or(0));
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} read  {msg}  [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let dry_run = change.dry_run;
    let options = RunOptions {
        filter: change.filter.clone(),
        limit: change.limit,
        rate: change.rate,
        dry_run,
        batch: change.batch,
    };
    let mut observe = |event: Event<'_>| match event {
        Event::Planned(record, action) if dry_run => {
            progress.suspend(|| println!("would {} {}", describe(action), record.id));
        }
        Event::Planned(..) => {}
        Event::Elsewhere(record, elsewhere) if dry_run => {
            progress.suspend(|| println!("would skip {}: {elsewhere}", record.id));
        }
        Event::Elsewhere(record, elsewhere) => {
            progress.suspend(|| eprintln!("left in {queue}: {}: {elsewhere}", record.id));
        }
        Event::Failed(record, reason) => progress.suspend(|| eprintln!("left in {queue}: {}: {reason}", record.id)),
        Event::Progress(summary) => {
            progress.set_position(summary.read);
            progress.set_message(format!(
                "{} replayed, {} parked, {} purged",
                summary.replayed, summary.parked, summary.purged
            ));
        }
    };
    let summary = dlq::run::run(&mut store, operation, &options, &mut observe).await;
    progress.finish_and_clear();
    // The run's own error (or summary) matters more than a failure to close afterwards:
    // every batch settled so far is committed either way.
    let closed = store.close().await;
    let summary = summary?;
    print_summary(&summary, dry_run);
    if let Err(error) = closed {
        eprintln!("closing {queue}: {error}");
    }
    Ok(if summary.failed > 0 || summary.elsewhere > 0 { 2 } else { 0 })
}

fn describe(action: &dlq::run::Action) -> String {
    match action {
        dlq::run::Action::Replay(to) => format!("replay to {to}:"),
        dlq::run::Action::Park { to, guard: true } => format!("park (replayed too often) in {to}:"),
        dlq::run::Action::Park { to, guard: false } => format!("park in {to}:"),
        dlq::run::Action::Purge => "purge".to_owned(),
    }
}

fn print_summary(summary: &Summary, dry_run: bool) {
    let verb = if dry_run { "would be " } else { "" };
    println!(
        "{} read: {}{} replayed, {} parked, {} purged; {} skipped (not matching or over the limit), {} skipped \
         (another queue's records), {} failed (left in place)",
        summary.read,
        verb,
        summary.replayed,
        summary.parked,
        summary.purged,
        summary.skipped,
        summary.elsewhere,
        summary.failed
    );
}

fn confirm_purge(target: &Target, filter: &Filter) -> anyhow::Result<()> {
    anyhow::ensure!(std::io::stdin().is_terminal(), "refusing to purge without --yes: stdin is not a terminal");
    let queue = target.queue()?;
    let which = if filter.is_empty() { "EVERY record" } else { "the matching records" };
    eprint!("Delete {which} of {queue}? This cannot be undone. Type yes: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    anyhow::ensure!(answer.trim() == "yes", "not purged");
    Ok(())
}
