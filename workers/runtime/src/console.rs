//! The dev console: a worker on the embedded in-memory broker, fed from standard input.
//! Each line is published as a request; the reply (or the dead-letter record) is printed.
//! The worker runs the same pipeline as in production.

use std::{io::IsTerminal, time::Duration};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    contract::{
        codec::Codec,
        error_reply::ErrorReply,
        headers::{self as h, Headers},
        protobuf_text,
        status::Status,
    },
    handler::Handler,
    shutdown,
    transport::{Message, Topology, Transport, memory::MemoryBroker},
    worker,
};

/// Where the console asks for replies (allowed by the default `*.replies` pattern).
const CONSOLE_REPLIES: &str = "console.replies";
/// How long the console waits for a reply before it moves on.
const REPLY_WAIT: Duration = Duration::from_secs(15);

/// Run the worker on an in-memory broker and the console on stdin/stdout until EOF,
/// `:quit`, ctrl-c or SIGTERM.
pub(crate) async fn run<H: Handler>(settings: Settings, handler: H) -> anyhow::Result<()> {
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
    if H::PROTOBUF.is_some() {
        println!("      :pb {{\"message\": \"world\"}}   sends it as Protocol Buffers (application/x-protobuf)");
    }
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
            line => {
                let Some((payload, codec)) = encode::<H>(line) else { continue };
                request::<H>(&broker, &topology, payload, codec).await?;
            }
        }
    }
    stop.cancel();
    worker.await??;
    Ok(())
}

/// A typed line as a payload: as it is (JSON), or after `:pb `, its JSON encoded as the
/// worker's protobuf request. `None` (with the reason printed) when that cannot be done.
fn encode<H: Handler>(line: &str) -> Option<(Vec<u8>, Codec)> {
    let Some(json) = line.strip_prefix(":pb") else { return Some((line.as_bytes().to_vec(), Codec::Json)) };
    let Some(protobuf) = H::PROTOBUF else {
        println!("  this worker takes JSON only");
        return None;
    };
    let encoded = serde_json::from_str(json.trim()).map_err(|e| e.to_string()).and_then(|v| protobuf.encode_request(v));
    match encoded {
        Ok(bytes) => Some((bytes, Codec::Protobuf)),
        Err(why) => {
            println!("  not a request the worker's protobuf message can hold: {why}");
            None
        }
    }
}

/// A reply's payload for people: JSON as it is, protobuf decoded (to JSON where the
/// worker's types say how).
fn show<H: Handler>(reply: &Message) -> String {
    let protobuf =
        reply.headers.get(h::CONTENT_TYPE).and_then(|ct| Codec::of_content_type(ct)) == Some(Codec::Protobuf);
    if !protobuf {
        return String::from_utf8_lossy(&reply.payload).into_owned();
    }
    let decoded = match (Status::of(&reply.headers), H::PROTOBUF) {
        (Some(Status::Ok), Some(codec)) => codec.decode_reply(&reply.payload).ok(),
        _ => ErrorReply::decode(Codec::Protobuf, &reply.payload).and_then(|e| serde_json::to_value(e).ok()),
    };
    match decoded {
        Some(json) => format!("(protobuf, {} bytes) {json}", reply.payload.len()),
        None => protobuf_text::describe_payload(&reply.headers, &reply.payload)
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.payload).into_owned()),
    }
}

async fn request<H: Handler>(
    broker: &MemoryBroker,
    topology: &Topology,
    payload: Vec<u8>,
    codec: Codec,
) -> anyhow::Result<()> {
    let (queue, dead_letters) = (&topology.queue, &topology.dead_letter);
    let id = uuid::Uuid::new_v4().to_string();
    let headers: Headers = [
        (h::MESSAGE_ID, id.as_str()),
        (h::CORRELATION_ID, id.as_str()),
        (h::REPLY_TO, CONSOLE_REPLIES),
        (h::CONTENT_TYPE, codec.content_type()),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.to_owned()))
    .collect();
    broker.publish(queue, &Message { payload: payload.into(), headers, key: None }).await?;
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
            println!("  late reply to an earlier request: {}", show::<H>(&reply));
            continue;
        }
        let status = reply.headers.get(h::STATUS).map_or("?", String::as_str);
        println!("  reply {status}: {}", show::<H>(&reply));
        if Status::of(&reply.headers) != Some(Status::Ok) {
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
        h::truncate(
            &protobuf_text::describe_payload(&record.headers, &record.payload)
                .unwrap_or_else(|| String::from_utf8_lossy(&record.payload).into_owned()),
            200
        ),
    );
}
