//! The Kafka greeter written on `RustStream` (`ruststream` + `ruststream-rdkafka`), as a peer of
//! the Courier worker in the Kafka benchmark. Written the way the framework's own examples
//! write a request/reply service: a `#[subscriber]` handler that returns its reply, a
//! `Commit::Tracked` subscription, and a reply-position publish transform that names the reply
//! topic per delivery.
//!
//! Consumes `<topic>` in group `<group>`; for each `{"message": ..}` request (the greeter's
//! request schema, unchecked) it publishes `{"result":"Hello, <message>"}` to the topic named by the request's `courier-reply-to` header,
//! with the request's `courier-correlation-id` header and its record key. The runtime acks the
//! request only once the reply's delivery report is in, and under `Commit::Tracked` that ack is
//! what stores its offset.
//!
//! Usage: ruststream-greeter <bootstrap> <topic> <group> [workers]
//!
//! `workers` (default 1000) is `RustStream`'s `workers(n)`: how many deliveries are handled at
//! once, in no particular order. The framework's own default is one at a time.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::process::ExitCode;

use ruststream::Str;
use ruststream::runtime::{ForReply, Names, PublishContext, PublishTransform};
use ruststream_rdkafka::PARTITION_KEY_HEADER;
use ruststream_rdkafka::prelude::*;
use serde::{Deserialize, Serialize};

/// The header naming the topic a request is answered on.
const REPLY_TO: &str = "courier-reply-to";
/// The header a reply carries back unchanged.
const CORRELATION_ID: &str = "courier-correlation-id";
/// Deliveries handled at once when the command line names no count.
const DEFAULT_WORKERS: usize = 1000;

#[derive(Debug, Deserialize)]
struct GreetRequest {
    message: String,
}

/// Declares no topic of its own: [`CourierReply`] names one per delivery, and the `reply(..)`
/// clause's topic is only the fallback for a request without `courier-reply-to`.
#[derive(Debug, Serialize, Outgoing)]
struct Greeting {
    result: String,
}

#[subscriber(KafkaTopic::new("greetings"), reply("greetings.unaddressed"))]
async fn greet(request: &GreetRequest) -> Greeting {
    Greeting { result: format!("Hello, {}", request.message) }
}

/// Addresses a reply the way the request asks: to the topic in its `courier-reply-to` header,
/// with its correlation id and its record key (the framework carries a record key as the
/// `kafka-partition-key` header, which becomes the reply record's native key).
#[derive(Debug, Clone, Copy)]
struct CourierReply;

impl<C, Options> PublishTransform<ForReply<C>, Options> for CourierReply {
    type Destination = Names;

    fn apply(
        &self,
        out: &mut ruststream::runtime::Outgoing<'_>,
        _options: &mut Option<Options>,
        cx: &PublishContext<'_, C>,
    ) {
        let request = cx.headers();
        if let Some(topic) = request.get_shared(REPLY_TO).and_then(|value| Str::try_from(value).ok()) {
            out.set_name(topic);
        }
        let reply = out.headers_mut();
        if let Some(correlation) = request.get_shared(CORRELATION_ID) {
            reply.insert(CORRELATION_ID, correlation);
        }
        if let Some(key) = request.get_shared(PARTITION_KEY_HEADER) {
            reply.insert(PARTITION_KEY_HEADER, key);
        }
    }
}

fn app(bootstrap: &str, topic: &str, group: &str, workers: NonZeroUsize) -> impl App {
    let broker = KafkaBroker::new([bootstrap])
        .producer_config("enable.idempotence", "true")
        .producer_config("acks", "all")
        .producer_config("linger.ms", "1");
    let requests = KafkaTopic::new(topic)
        .group(group)
        .start(StartOffset::Earliest)
        .commit(Commit::Tracked)
        .config("fetch.wait.max.ms", "10");
    RustStream::new(AppInfo::new("ruststream-greeter", env!("CARGO_PKG_VERSION")))
        // Startup returns once the group has assigned this member its partitions.
        .after_startup(async |_| {
            eprintln!("Partitions assigned.");
            Ok::<_, Infallible>(())
        })
        .with_broker(broker, |b| {
            b.include(greet.map_source(|_| requests).workers(workers))
                .out_reply(Publish::default())
                .transform(CourierReply);
        })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [bootstrap, topic, group] => NonZeroUsize::new(DEFAULT_WORKERS).map(|n| (bootstrap, topic, group, n)),
        [bootstrap, topic, group, workers] => workers.parse().ok().map(|n| (bootstrap, topic, group, n)),
        _ => None,
    };
    let Some((bootstrap, topic, group, workers)) = parsed else {
        eprintln!("usage: ruststream-greeter <bootstrap> <topic> <group> [workers]");
        return ExitCode::from(2);
    };
    // Runs until SIGINT or SIGTERM, then shuts down gracefully.
    match app(bootstrap, topic, group, workers).run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ruststream-greeter: {err}");
            ExitCode::FAILURE
        }
    }
}
