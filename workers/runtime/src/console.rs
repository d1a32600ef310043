//! The dev console: a worker on the embedded in-memory broker, fed from standard input.
//! Each line is published as a request; the reply (or the dead-letter record) is printed.
//! The worker runs the same pipeline as in production.

use std::{io::IsTerminal, time::Duration};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    contract::headers::{self as h, Headers},
    handler::Handler,
    shutdown,
    transport::{Message, Transport, memory::MemoryBroker},
    worker,
};

/// Where the console asks for replies (allowed by the default `*.replies` pattern).
const CONSOLE_REPLIES: &str = "console.replies";
/// How long the console waits for a reply before it moves on.
const REPLY_WAIT: Duration = Duration::from_secs(15);

/// Run the worker on an in-memory broker and the console on stdin/stdout until EOF,
/// `:quit`, ctrl-c or SIGTERM.
pub async fn run<H: Handler>(settings: Settings, handler: H) -> anyhow::Result<()> {
    let broker = MemoryBroker::new();
    let topology = settings.topology();
    broker.declare(&topology).await?;
    broker.declare_queue(CONSOLE_REPLIES, None);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(worker::run(settings.clone(), broker.clone(), handler, stop.clone().cancelled_owned()));

    let interactive = std::io::stdin().is_terminal();
    println!("Courier dev console: worker `{}` on the embedded in-memory broker (no broker needed).", settings.worker);
    println!("Type a request payload (JSON) and press enter; `:dlq` lists the dead-letter queue, `:quit` exits.");
    println!("Try:  {{\"message\": \"world\"}}   then   {{\"message\": \"\"}}   then   not json");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let signal = shutdown::signal();
    tokio::pin!(signal);
    loop {
        if interactive {
            print!("> ");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        let line = tokio::select! {
            line = lines.next_line() => line?,
            () = &mut signal => None,
        };
        let Some(line) = line else { break };
        match line.trim() {
            "" => {}
            ":quit" | ":q" => break,
            ":dlq" => list_dead_letters(&broker, &topology.dead_letter),
            payload => request(&broker, &topology.queue, &topology.dead_letter, payload).await?,
        }
    }
    stop.cancel();
    worker.await??;
    Ok(())
}

async fn request(broker: &MemoryBroker, queue: &str, dead_letters: &str, payload: &str) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().to_string();
    let headers: Headers = [
        (h::MESSAGE_ID, id.as_str()),
        (h::CORRELATION_ID, id.as_str()),
        (h::REPLY_TO, CONSOLE_REPLIES),
        (h::CONTENT_TYPE, h::JSON),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.to_owned()))
    .collect();
    broker.publish(queue, &Message { payload: payload.to_owned().into(), headers, key: None }).await?;
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(reply) = broker.receive(CONSOLE_REPLIES, left).await else {
            println!(
                "  … no reply within {REPLY_WAIT:?}: the request may be waiting in a retry tier (`:dlq` shows dead letters)."
            );
            return Ok(());
        };
        if reply.headers.get(h::CORRELATION_ID) != Some(&id) {
            println!("  late reply to an earlier request: {}", String::from_utf8_lossy(&reply.payload));
            continue;
        }
        let status = reply.headers.get(h::STATUS).map_or("?", String::as_str);
        println!("  reply {status}: {}", String::from_utf8_lossy(&reply.payload));
        if status != "ok" {
            let record = broker.peek(dead_letters).into_iter().find(|m| m.headers.get(h::CORRELATION_ID) == Some(&id));
            if let Some(record) = record {
                println!("  dead-lettered to {dead_letters}:");
                print_failure(&record);
            }
        }
        return Ok(());
    }
}

fn list_dead_letters(broker: &MemoryBroker, dead_letters: &str) {
    let records = broker.peek(dead_letters);
    println!("  {} record(s) in {dead_letters}", records.len());
    for record in records {
        print_failure(&record);
    }
}

fn print_failure(record: &Message) {
    let get = |name: &str| record.headers.get(name).map_or("-", String::as_str);
    println!(
        "    kind={} code={} fingerprint={} attempts={}\n    message: {}\n    payload: {}",
        get(h::FAILURE_KIND),
        get(h::FAILURE_CODE),
        get(h::FAILURE_FINGERPRINT),
        get(h::FAILURE_ATTEMPTS),
        get(h::FAILURE_MESSAGE),
        h::truncate(&String::from_utf8_lossy(&record.payload), 200),
    );
}
