//! Kafka benchmark on the mock cluster (its own process): the raw rdkafka pipe
//! (`bin/raw_kafka_pipe.rs`) against the greeter worker, then a slow handler (20 ms) at
//! concurrency 1, 8 and 64 in `partition` and `key` ordering on a 3-partition topic; then
//! the raw pipe against the worker again on tansu, an independent broker, as a second line.
//! With the no-op rows runs the closest Rust peer, a greeter on RustStream
//! (`tests/peers/ruststream`, its own cargo project: not part of the workspace or the tests).
//!
//! Run with `scripts/bench` (builds the release greeter and the peer, starts tansu).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use courier::transport::kafka::{KafkaTransport, Ordering};
use courier_tests::{
    kafka::{KafkaClient, MockKafkaProcess, config, reader},
    measure::{
        Figures, cpu_seconds, medians, peak_rss_mib, percentile, print_against, print_median_ratio, print_round,
        print_table,
    },
    process::Process,
};
use rdkafka::{Message as _, consumer::StreamConsumer, message::Headers as _};

/// No-op rows: requests per run, spread over [`NOOP_PARTITIONS`] (the mock cluster keeps
/// only about 5 MiB per partition). COURIER_BENCH_MESSAGES overrides.
const MESSAGES: usize = 150_000;
const NOOP_PARTITIONS: i32 = 12;
/// The slow-handler rows' targets are computed for this partition count.
const SLOW_PARTITIONS: i32 = 3;
const LATENCY_PHASE: Duration = Duration::from_secs(3);
const SLOW: Duration = Duration::from_millis(20);
/// The slow handler's deep-backlog row: librdkafka hands over each partition's fetch as a
/// run of its records, and every lane must still be reached (about 30 s of work).
const SLOW_BACKLOG: usize = 4_500;
/// Rounds of (raw, none, partition), alternated so that every pipe sees the same drift
/// of the shared machine; the table shows each pipe's median. COURIER_BENCH_ROUNDS overrides.
const ROUNDS: usize = 3;
/// Requests per run on tansu (COURIER_BENCH_TANSU_MESSAGES overrides).
const TANSU_MESSAGES: usize = 150_000;

/// What runs: the raw pipe (`contract`: writing the wire contract's reply, key and five
/// headers, as the worker does), the RustStream greeter, the greeter with (ordering,
/// handler delay, concurrency), or another build of it (`Compared`: its binary's name in
/// the target directory, and the same three), or the slow handler with (ordering,
/// concurrency) and this many requests waiting (`Backlog`).
#[derive(Clone, Copy)]
enum Pipe<'a> {
    Raw { contract: bool },
    RustStream,
    Greeter(&'a str, Option<Duration>, usize),
    Compared(&'a str, &'a str, usize),
    Backlog(&'a str, usize, usize),
}

/// The peer's binary, built by `scripts/bench` into this target directory.
const RUSTSTREAM_BINARY: &str = "ruststream-greeter";
const RUSTSTREAM_NAME: &str = "RustStream 0.7.7 greeter (Commit::Tracked)";

const RAW: Pipe<'static> = Pipe::Raw { contract: false };
const RAW_CONTRACT: Pipe<'static> = Pipe::Raw { contract: true };
const RAW_CONTRACT_NAME: &str = "raw rdkafka pipe writing the contract's reply (key + 5 headers)";

/// The broker a pipe runs on, and how its window is timed.
enum Broker {
    /// librdkafka's mock cluster. The requests are published before the pipe starts, and
    /// the window runs from its first reply to its last.
    Mock(MockKafkaProcess),
    /// tansu, which hands replies to a reader in bursts of seconds: timed from its first
    /// reply, a window would collapse. The pipe answers one warm-up request first (it is in
    /// its group then); the window runs from the first request published to the last reply.
    Tansu { bootstrap: String, admin: KafkaTransport },
}

impl Broker {
    fn bootstrap(&self) -> &str {
        match self {
            Broker::Mock(cluster) => &cluster.bootstrap,
            Broker::Tansu { bootstrap, .. } => bootstrap,
        }
    }

    async fn create(&mut self, topics: &[&str], partitions: i32) {
        match self {
            Broker::Mock(cluster) => {
                for topic in topics {
                    cluster.command(&format!("create {topic} {partitions}"));
                }
            }
            Broker::Tansu { admin, .. } => {
                assert_eq!(admin.config().partitions, partitions, "tansu topics are created with the no-op partitions");
                admin.create_topics(topics).await.expect("create topics on tansu");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let mut mock = Broker::Mock(MockKafkaProcess::start(&[]));
    // COURIER_BENCH_SLOW=key:64 runs just that slow-handler case (for experiments);
    // partition:64:4500 with that many requests waiting.
    if let Ok(slow) = std::env::var("COURIER_BENCH_SLOW") {
        let usage = "COURIER_BENCH_SLOW=<ordering>:<concurrency>[:<requests waiting>]";
        let mut parts = slow.split(':');
        let ordering = parts.next().unwrap_or_default();
        let concurrency: usize = parts.next().and_then(|c| c.parse().ok()).expect(usage);
        let pipe = match parts.next() {
            Some(backlog) => Pipe::Backlog(ordering, concurrency, backlog.parse().expect(usage)),
            None => Pipe::Greeter(ordering, Some(SLOW), concurrency),
        };
        let figures = run(&mut mock, "slow", pipe).await;
        println!("slow {ordering} {concurrency}: {:.0} msg/s", figures.rate);
        return;
    }
    let quick = std::env::var_os("COURIER_BENCH_QUICK").is_some();
    let rounds = if quick { 1 } else { ROUNDS };
    let rounds = std::env::var("COURIER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(rounds).max(1);
    // The raw pipe has no limit on messages in flight; the worker's is its concurrency
    // (COURIER_BENCH_CONCURRENCY overrides).
    let concurrency = std::env::var("COURIER_BENCH_CONCURRENCY").ok().and_then(|c| c.parse().ok()).unwrap_or(1000);
    let none_name = format!("greeter worker, ordering none (concurrency {concurrency})");
    let partition_name = "greeter worker, ordering partition (concurrency 64: the defaults)";
    let key_name = "greeter worker, ordering key (concurrency 1024)";
    let peer = peer_built();
    let (mut raw, mut contract, mut none, mut partition) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ruststream, mut key) = (Vec::new(), Vec::new());
    // COURIER_BENCH_COMPARE=NAME: another build of the greeter, copied into the target
    // directory as NAME, runs the `none` and `partition` rows too, in the same rounds.
    let compared = std::env::var("COURIER_BENCH_COMPARE").ok().filter(|binary| !binary.is_empty());
    let compared_names = compared.as_deref().map(|binary| {
        (format!("{none_name} [{binary}]"), format!("greeter worker, ordering partition (concurrency 64) [{binary}]"))
    });
    let (mut compared_none, mut compared_partition) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        raw.push(run(&mut mock, "raw rdkafka pipe", RAW).await);
        contract.push(run(&mut mock, RAW_CONTRACT_NAME, RAW_CONTRACT).await);
        if peer {
            ruststream.push(run(&mut mock, RUSTSTREAM_NAME, Pipe::RustStream).await);
        }
        none.push(run(&mut mock, &none_name, Pipe::Greeter("none", None, concurrency)).await);
        partition.push(run(&mut mock, partition_name, Pipe::Greeter("partition", None, 64)).await);
        key.push(run(&mut mock, key_name, Pipe::Greeter("key", None, 1024)).await);
        if let (Some(binary), Some((none_name, partition_name))) = (compared.as_deref(), &compared_names) {
            compared_none.push(run(&mut mock, none_name, Pipe::Compared(binary, "none", concurrency)).await);
            compared_partition.push(run(&mut mock, partition_name, Pipe::Compared(binary, "partition", 64)).await);
            for (before, this) in [(&compared_none, &none), (&compared_partition, &partition)] {
                print_against(round, binary, &before[round - 1], &this[round - 1]);
            }
        }
        print_round(round, &raw[round - 1], &none[round - 1]);
    }
    print_median_ratio(&raw, &none);
    let raw = Figures::median(&raw);
    let raw_rate = raw.rate;
    print_table(
        &format!(
            "Kafka, mock cluster ({} messages, {NOOP_PARTITIONS} partitions; median of {rounds} alternated rounds; latency at half the peak rate)",
            messages_per_run()
        ),
        &[
            &[raw, Figures::median(&contract)][..],
            &medians(&ruststream),
            &[Figures::median(&none), Figures::median(&partition), Figures::median(&key)],
            &medians(&compared_none),
            &medians(&compared_partition),
        ]
        .concat(),
    );
    let none = Figures::median(&none);
    for baseline in [medians(&contract), medians(&ruststream)].concat() {
        println!(
            "\n{} against the {}: throughput {:.2}x, CPU {:.2}x",
            none.name,
            baseline.name,
            none.rate / baseline.rate,
            none.cpu_per_10k / baseline.cpu_per_10k
        );
    }
    if !quick {
        slow_rows(&mut mock, raw_rate).await;
    }
    drop(mock);
    tansu_line(rounds, concurrency).await;
}

/// The no-op rows again on tansu (COURIER_BENCH_TANSU, default 127.0.0.1:9092, started by
/// `scripts/bench`; `none` skips them); skipped with a note when it does not answer.
async fn tansu_line(rounds: usize, concurrency: usize) {
    let bootstrap = std::env::var("COURIER_BENCH_TANSU").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    if bootstrap == "none" {
        return;
    }
    let mut settings = config(&bootstrap, Ordering::None);
    settings.partitions = NOOP_PARTITIONS;
    let Ok(admin) = KafkaTransport::connect(settings).await else {
        println!("\ntansu at {bootstrap} does not answer (scripts/brokers/tansu-up starts it): no tansu line.");
        return;
    };
    let mut tansu = Broker::Tansu { bootstrap, admin };
    let none_name = format!("greeter worker, ordering none (concurrency {concurrency})");
    let (mut raw, mut none) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        raw.push(run(&mut tansu, "raw rdkafka pipe", RAW).await);
        none.push(run(&mut tansu, &none_name, Pipe::Greeter("none", None, concurrency)).await);
        print_round(round, &raw[round - 1], &none[round - 1]);
    }
    print_median_ratio(&raw, &none);
    print_table(
        &format!(
            "Kafka, tansu 0.6.0 in memory ({} messages, {NOOP_PARTITIONS} partitions; median of {rounds} alternated rounds; timed from the first request; latency at half the peak rate)",
            tansu_messages()
        ),
        &[Figures::median(&raw), Figures::median(&none)],
    );
}

/// The slow handler (20 ms) at concurrency 1, 8, 64 in `partition` and `key` ordering, and
/// `partition` at 64 with [`SLOW_BACKLOG`] requests waiting.
async fn slow_rows(cluster: &mut Broker, raw_rate: f64) {
    println!("\nSlow handler ({} ms), {SLOW_PARTITIONS} partitions, many keys\n", SLOW.as_millis());
    println!("| ordering | concurrency | msg/s | target | met |");
    println!("|---|---:|---:|---:|---|");
    let cells = ["partition", "key"]
        .into_iter()
        .flat_map(|ordering| [1usize, 8, 64].map(|concurrency| (ordering, concurrency, None)))
        .chain([("partition", 64, Some(SLOW_BACKLOG))]);
    for (ordering, concurrency, backlog) in cells {
        let ideal = match ordering {
            "partition" => concurrency.min(SLOW_PARTITIONS as usize) as f64 / SLOW.as_secs_f64(),
            _ => (concurrency as f64 / SLOW.as_secs_f64()).min(raw_rate),
        };
        let target = 0.9 * ideal;
        let (label, shown, pipe) = match backlog {
            Some(backlog) => (
                format!("slow-{ordering}-{concurrency}-backlog"),
                format!("{ordering}, {backlog} waiting"),
                Pipe::Backlog(ordering, concurrency, backlog),
            ),
            None => (
                format!("slow-{ordering}-{concurrency}"),
                ordering.to_owned(),
                Pipe::Greeter(ordering, Some(SLOW), concurrency),
            ),
        };
        let figures = run(cluster, &label, pipe).await;
        let met = if figures.rate >= target { "yes" } else { "NO" };
        println!("| {shown} | {concurrency} | {:.0} | {target:.0} | {met} |", figures.rate);
    }
}

/// Whether the RustStream greeter is built (`scripts/bench` builds it); a note when not.
fn peer_built() -> bool {
    let exe = std::env::current_exe().expect("bench executable path");
    let built = exe.parent().and_then(|deps| deps.parent()).is_some_and(|dir| dir.join(RUSTSTREAM_BINARY).exists());
    if !built {
        println!("No {RUSTSTREAM_BINARY} in the target directory (scripts/bench builds it): no RustStream row.");
    }
    built
}

/// Requests per no-op run.
fn messages_per_run() -> usize {
    std::env::var("COURIER_BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(MESSAGES)
}

/// Requests per run on tansu.
fn tansu_messages() -> usize {
    std::env::var("COURIER_BENCH_TANSU_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(TANSU_MESSAGES)
}

/// One run of `pipe` on `broker`.
async fn run(broker: &mut Broker, name: &str, pipe: Pipe<'_>) -> Figures {
    let (binary, worker, backlog) = match pipe {
        Pipe::Greeter(ordering, delay, concurrency) => ("greeter", Some((ordering, delay, concurrency)), None),
        Pipe::Backlog(ordering, concurrency, backlog) => {
            ("greeter", Some((ordering, Some(SLOW), concurrency)), Some(backlog))
        }
        Pipe::Compared(binary, ordering, concurrency) => (binary, Some((ordering, None, concurrency)), None),
        Pipe::Raw { .. } | Pipe::RustStream => ("", None, None),
    };
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (queue, replies, group) =
        (format!("bench-{id}.requests"), format!("bench-{id}.replies"), format!("bench-{id}"));
    let slow = worker.is_some_and(|(_, delay, _)| delay.is_some());
    let partitions = if slow { SLOW_PARTITIONS } else { NOOP_PARTITIONS };
    let (dlq, parking) = (format!("{queue}.dlq"), format!("{queue}.parking"));
    broker.create(&[&queue, &replies, &dlq, &parking], partitions).await;
    let on_tansu = matches!(broker, Broker::Tansu { .. });
    let messages = match (backlog, worker) {
        (Some(backlog), _) => backlog,
        (None, Some((ordering, Some(delay), concurrency))) => {
            let lanes = if ordering == "partition" { concurrency.min(partitions as usize) } else { concurrency };
            ((lanes as f64 / delay.as_secs_f64()) * 4.0).clamp(100.0, 10_000.0) as usize
        }
        _ if on_tansu => tansu_messages(),
        _ => messages_per_run(),
    };
    let bootstrap = broker.bootstrap().to_owned();
    let client = KafkaClient::new(&bootstrap);
    if !on_tansu {
        // An even spread over the partitions: the targets assume every lane stays busy.
        client.publish_greetings_to(&queue, &replies, "t", messages, Some(partitions)).await;
    }

    let broker = format!("kafka://{bootstrap}");
    // COURIER_BENCH_WRAP runs each pipe under a command (`valgrind --tool=callgrind`, say).
    let wrap = std::env::var("COURIER_BENCH_WRAP").unwrap_or_default();
    let wrapper: Vec<&str> = wrap.split_whitespace().collect();
    let mut process = match worker {
        None if matches!(pipe, Pipe::RustStream) => {
            let args = [bootstrap.as_str(), &queue, &group];
            Process::start_under(&wrapper, RUSTSTREAM_BINARY, "bench-ruststream", &args, &[("RUST_LOG", "warn")])
        }
        None => {
            let mut args = vec![bootstrap.as_str(), &queue, &group];
            if matches!(pipe, Pipe::Raw { contract: true }) {
                args.push("--contract");
            }
            Process::start_under(&wrapper, "raw-kafka-pipe", "bench-raw-kafka", &args, &[])
        }
        Some((ordering, delay, concurrency)) => {
            let concurrency = concurrency.to_string();
            let partitions = partitions.to_string();
            let args = [
                "--broker",
                &broker,
                "--queue",
                &queue,
                "--replies",
                &replies,
                "--group",
                &group,
                "--ordering",
                ordering,
                "--concurrency",
                &concurrency,
                "--retry-delays",
                "",
                "--partitions",
                &partitions,
                "--kafka-property",
                "fetch.wait.max.ms=10",
            ];
            let mut args = args.to_vec();
            if delay.is_some() {
                // Latency-bound (one message per lane at a time): send replies without
                // lingering, as an operator would tune such a worker. The no-op rows keep the
                // raw pipe's linger.ms=1.
                args.extend(["--kafka-property", "linger.ms=0"]);
            }
            let latency = delay.map(|d| d.as_millis().to_string()).unwrap_or_default();
            let mut env = vec![("RUST_LOG", "warn")];
            if delay.is_some() {
                env.push(("GREETER_LATENCY_MS", latency.as_str()));
            }
            Process::start_under(&wrapper, binary, &format!("bench-kafka-{ordering}-{concurrency}"), &args, &env)
        }
    };
    let pid = process.pid();
    let reader = reader(&bootstrap, &replies, partitions);

    let (timed, elapsed, cpu) = if on_tansu {
        client.publish_one(&queue, &replies, "warm-up");
        recv(&reader).await;
        let (start, cpu_start) = (Instant::now(), cpu_seconds(pid));
        let publish = client.publish_greetings_to(&queue, &replies, "t", messages, Some(partitions));
        let collect = async {
            for _ in 0..messages {
                recv(&reader).await;
            }
        };
        tokio::join!(publish, collect);
        (messages, start.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu_start)
    } else {
        recv(&reader).await;
        let (start, cpu_start) = (Instant::now(), cpu_seconds(pid));
        for _ in 1..messages {
            recv(&reader).await;
        }
        (messages - 1, start.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu_start)
    };
    let mut figures = Figures {
        name: name.to_owned(),
        rate: timed as f64 / elapsed,
        cpu_per_10k: cpu / timed as f64 * 10_000.0,
        ..Figures::default()
    };
    // Under a profiler (COURIER_BENCH_WRAP) only the requests published above are processed.
    if worker.is_none_or(|(_, delay, _)| delay.is_none()) && wrapper.is_empty() {
        let mut latencies = latency_phase(&client, &reader, &queue, &replies, figures.rate / 2.0).await;
        figures.p50 = percentile(&mut latencies, 50.0);
        figures.p99 = percentile(&mut latencies, 99.0);
    }
    figures.rss_mib = peak_rss_mib(pid);
    assert!(process.running(), "{name} died:\n{}", process.tail());
    process.terminate();
    figures
}

/// The next reply's correlation id.
async fn recv(reader: &StreamConsumer) -> String {
    let record = tokio::time::timeout(Duration::from_secs(60), reader.recv())
        .await
        .expect("a reply within 60 s")
        .expect("reply");
    record
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "courier-correlation-id").and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Publish at `rate` for [`LATENCY_PHASE`] and measure request→reply latencies.
async fn latency_phase(
    client: &KafkaClient,
    reader: &StreamConsumer,
    queue: &str,
    replies: &str,
    rate: f64,
) -> Vec<Duration> {
    let total = (rate * LATENCY_PHASE.as_secs_f64()).max(10.0) as usize;
    let interval = LATENCY_PHASE.div_f64(total as f64);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let publisher = async {
        let phase_start = Instant::now();
        for i in 0..total {
            let due = phase_start + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let id = format!("lat-{i}");
            sent.lock().expect("sent").insert(id.clone(), Instant::now());
            client.publish_one(queue, replies, &id);
        }
    };
    let collector = async {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            let id = recv(reader).await;
            if let Some(at) = sent.lock().expect("sent").remove(&id) {
                latencies.push(at.elapsed());
            }
        }
        latencies
    };
    let ((), latencies) = tokio::join!(publisher, collector);
    latencies
}
