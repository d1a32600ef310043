//! RabbitMQ benchmark: the raw lapin pipe (`bin/raw_amqp_pipe.rs`) and the greeter
//! worker with JSON requests, with the same requests in Protocol Buffers, and with the
//! idempotent inbox (`--inbox`, the local PostgreSQL), one after
//! the other on the local broker, with the same prefetch, persistence and confirms.
//! Prints throughput, CPU per 10k messages, latency at half the peak rate and peak RSS,
//! with each worker's ratio to the raw pipe.
//!
//! Run with `scripts/bench` (builds the release greeter first). `COURIER_BENCH_WRAP` runs
//! each pipe under a command such as `valgrind --tool=callgrind` (the latency phase is then
//! skipped), as in the Kafka bench.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use courier::contract::codec::Codec;
use courier_tests::{
    measure::{
        Figures, cpu_seconds, medians, peak_rss_mib, percentile, print_against, print_median_ratio, print_round,
        print_table,
    },
    process::Process,
    rabbitmq::{RawClient, cleanup, greeting, names, url},
};
use futures::StreamExt;
use lapin::{BasicProperties, options::BasicConsumeOptions, types::FieldTable};

/// Requests per run (COURIER_BENCH_MESSAGES overrides).
const MESSAGES: usize = 30_000;
/// The raw pipe's prefetch and the worker's `--concurrency` (COURIER_BENCH_PREFETCH
/// overrides).
const PREFETCH: &str = "64";
const LATENCY_PHASE: Duration = Duration::from_secs(4);

/// The raw lapin pipe's binary (`tests/bin/raw_amqp_pipe.rs`).
const RAW_BINARY: &str = "raw-amqp-pipe";

/// Rounds of (raw, worker), alternated so that both see the same drift of the shared
/// machine; the table shows each pipe's median. COURIER_BENCH_ROUNDS overrides.
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() {
    let rounds = std::env::var("COURIER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS).max(1);
    let (mut raw, mut worker, mut protobuf, mut inbox) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // COURIER_BENCH_COMPARE=NAME: another build of the greeter, copied into the target
    // directory as NAME, runs the JSON row too, in the same rounds.
    let compared = std::env::var("COURIER_BENCH_COMPARE").ok().filter(|binary| !binary.is_empty());
    let compared_name = compared.as_deref().map(|binary| format!("greeter worker [{binary}]"));
    let mut before = Vec::new();
    let mut order = vec![Row::Raw, Row::Worker];
    order.extend(compared.is_some().then_some(Row::Compared));
    order.extend([Row::Protobuf, Row::Inbox]);
    for round in 1..=rounds {
        // Each round starts one row later, so that no row always runs right after the same
        // one (the broker may still be busy with that row's queue).
        for row in order.iter().cycle().skip(round - 1).take(order.len()) {
            match row {
                Row::Raw => raw.push(run("raw lapin pipe", RAW_BINARY, Codec::Json, false).await),
                Row::Worker => worker.push(run("greeter worker", "greeter", Codec::Json, false).await),
                Row::Compared => {
                    let (binary, name) = compared.as_deref().zip(compared_name.as_deref()).expect("a compared build");
                    before.push(run(name, binary, Codec::Json, false).await);
                }
                Row::Protobuf => {
                    protobuf.push(run("greeter worker, protobuf", "greeter", Codec::Protobuf, false).await)
                }
                Row::Inbox => inbox.push(run("greeter worker, inbox", "greeter", Codec::Json, true).await),
            }
        }
        if let Some(binary) = compared.as_deref() {
            print_round(round, &raw[round - 1], &before[round - 1]);
            print_against(round, binary, &before[round - 1], &worker[round - 1]);
        }
        for pipe in [&worker, &protobuf, &inbox] {
            print_round(round, &raw[round - 1], &pipe[round - 1]);
        }
    }
    for pipe in [&worker, &protobuf, &inbox, &before].into_iter().filter(|pipe| !pipe.is_empty()) {
        print_median_ratio(&raw, pipe);
    }
    print_table(
        &format!(
            "RabbitMQ ({} persistent messages, prefetch {}, confirms; median of {rounds} alternated rounds; latency at half the peak rate)",
            messages(),
            prefetch()
        ),
        &[
            &[Figures::median(&raw), Figures::median(&worker), Figures::median(&protobuf), Figures::median(&inbox)][..],
            &medians(&before),
        ]
        .concat(),
    );
}

/// The rows of a round.
#[derive(Clone, Copy)]
enum Row {
    Raw,
    Worker,
    Compared,
    Protobuf,
    Inbox,
}

/// [`PREFETCH`], or COURIER_BENCH_PREFETCH when it is a number from 1 (0 would be no
/// limit for the raw pipe and a refused `--concurrency` for the worker).
fn prefetch() -> String {
    std::env::var("COURIER_BENCH_PREFETCH")
        .ok()
        .filter(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
        .unwrap_or_else(|| PREFETCH.to_owned())
}

fn messages() -> usize {
    std::env::var("COURIER_BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(MESSAGES)
}

/// One pipe's run; `inbox`: the worker with `--inbox` on the local PostgreSQL
/// (`COURIER_TEST_POSTGRES_URL` overrides).
async fn run(name: &str, binary: &str, codec: Codec, inbox: bool) -> Figures {
    let messages = messages();
    let wrap = std::env::var("COURIER_BENCH_WRAP").unwrap_or_default();
    let wrapper: Vec<&str> = wrap.split_whitespace().collect();
    let (queue, replies) = names("bench");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    client.publish_greetings_in(codec, &queue, &replies, &format!("{queue}-t"), messages).await;

    let url = url();
    let database = courier_tests::postgres::url();
    let prefetch = prefetch();
    // The raw pipe takes its arguments in order; a greeter (or an earlier build of it) flags.
    let mut args: Vec<&str> = if binary != RAW_BINARY {
        vec![
            "--broker",
            &url,
            "--queue",
            &queue,
            "--replies",
            &replies,
            "--concurrency",
            &prefetch,
            "--retry-delays",
            "",
        ]
    } else {
        vec![&url, &queue, &prefetch]
    };
    if inbox {
        args.extend(["--inbox", &database]);
    }
    let mut process =
        Process::start_under(&wrapper, binary, &format!("bench-{binary}"), &args, &[("RUST_LOG", "warn")]);
    let pid = process.pid();

    // Throughput: the backlog is drained; time from the first reply to the last.
    let consumer = client
        .channel
        .basic_consume(
            replies.as_str().into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    let mut consumer = consumer;
    consumer.next().await.expect("first reply").expect("delivery");
    let (start, cpu_start) = (Instant::now(), cpu_seconds(pid));
    for _ in 1..messages {
        consumer.next().await.expect("reply").expect("delivery");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_start;
    let rate = (messages - 1) as f64 / elapsed;
    let cpu_per_10k = cpu / (messages - 1) as f64 * 10_000.0;
    if !wrapper.is_empty() {
        // Under a profiler: only the backlog above; the profile is written on SIGTERM.
        let rss_mib = peak_rss_mib(pid);
        process.terminate();
        cleanup(&queue, &replies).await;
        let zero = Duration::ZERO;
        return Figures { name: name.to_owned(), rate, cpu_per_10k, p50: zero, p99: zero, rss_mib };
    }

    // Latency at half the peak rate.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Ok(Some(Ok(reply))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                let id = reply.properties.correlation_id().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default();
                if let Some(at) = sent.lock().expect("sent").remove(&id) {
                    latencies.push(at.elapsed());
                }
            }
            latencies
        })
    };
    let total = (rate / 2.0 * LATENCY_PHASE.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(LATENCY_PHASE.as_secs_f64() / total as f64);
    let phase_start = Instant::now();
    let mut confirms = Vec::new();
    for i in 0..total {
        let due = phase_start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let id = format!("lat-{i}");
        let props = BasicProperties::default()
            .with_message_id(format!("{queue}-{id}").as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_reply_to(replies.as_str().into())
            .with_content_type(codec.content_type().into())
            .with_delivery_mode(2);
        sent.lock().expect("sent").insert(id.clone(), Instant::now());
        let body = greeting(codec, &id);
        confirms.push(
            client
                .channel
                .basic_publish("".into(), queue.as_str().into(), Default::default(), &body, props)
                .await
                .expect("publish"),
        );
        if confirms.len() >= 256 {
            for confirm in confirms.drain(..) {
                confirm.await.expect("confirm");
            }
        }
    }
    for confirm in confirms {
        confirm.await.expect("confirm");
    }
    let mut latencies = latencies.await.expect("latency task");
    let rss_mib = peak_rss_mib(pid);
    assert!(process.running(), "{name} died:\n{}", process.tail());
    process.terminate();
    cleanup(&queue, &replies).await;
    let answered = latencies.len();
    assert!(answered * 100 >= total * 99, "{name}: only {answered} of {total} latency probes answered");
    Figures {
        name: name.to_owned(),
        rate,
        cpu_per_10k,
        p50: percentile(&mut latencies, 50.0),
        p99: percentile(&mut latencies, 99.0),
        rss_mib,
    }
}
