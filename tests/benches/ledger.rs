//! Batch benchmark: the ledger worker with its inbox on the local PostgreSQL, one request
//! per handler call against batches of 10, 100 and 500 (`--batch-size`), on RabbitMQ and
//! on the Kafka mock cluster (`--ordering key`, every payment its own key), in alternated
//! rounds. Every row runs at `--concurrency` 1,000 with the default 16 inbox connections.
//! Prints throughput (a backlog drained), CPU per 10k, latency at half the peak rate and
//! peak RSS, with each row's ratio to one request per call.
//!
//! Run with `scripts/bench` (builds the release ledger first). `COURIER_BENCH_BATCHES=1,100`
//! picks the rows. The tables are analyzed before each run, as autovacuum would keep them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use courier_tests::{
    kafka::{KafkaClient, MockKafkaProcess, reader},
    measure::{Figures, cpu_seconds, peak_rss_mib, percentile, print_table_against},
    process::Process,
    rabbitmq::{RawClient, cleanup, names, url},
};
use futures::StreamExt;
use lapin::{options::BasicConsumeOptions, types::FieldTable};
use rdkafka::{Message as _, consumer::StreamConsumer, message::Headers as _};

/// Payments per run (COURIER_BENCH_MESSAGES overrides).
const MESSAGES: usize = 20_000;
const CONCURRENCY: &str = "1000";
const PARTITIONS: i32 = 3;
const ACCOUNTS: usize = 100;
const LATENCY_PHASE: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;
const BATCHES: [usize; 4] = [1, 10, 100, 500];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Broker {
    RabbitMq,
    Kafka,
}

#[tokio::main]
async fn main() {
    let rounds = std::env::var("COURIER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS).max(1);
    let batches: Vec<usize> = std::env::var("COURIER_BENCH_BATCHES")
        .ok()
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| BATCHES.to_vec());
    let mut mock = MockKafkaProcess::start(&[]);
    let mut figures: HashMap<(u8, usize), Vec<Figures>> = HashMap::new();
    for round in 1..=rounds {
        for broker in [Broker::RabbitMq, Broker::Kafka] {
            for &size in &batches {
                let row = run(broker, size, &mut mock).await;
                println!(
                    "round {round}: {}: {:.0} msg/s, CPU {:.3} s/10k, p50 {:?}",
                    row.name, row.rate, row.cpu_per_10k, row.p50
                );
                figures.entry((broker as u8, size)).or_default().push(row);
            }
        }
    }
    for (broker, title) in [(Broker::RabbitMq, "RabbitMQ"), (Broker::Kafka, "Kafka mock cluster, --ordering key")] {
        let rows: Vec<Figures> = batches.iter().map(|size| Figures::median(&figures[&(broker as u8, *size)])).collect();
        print_table_against(
            &format!(
                "Ledger with the inbox on {title} ({} payments, --concurrency {CONCURRENCY}, 16 inbox connections; median of {rounds} alternated rounds; latency at half the peak rate; ratios to one request per call)",
                messages()
            ),
            &rows,
            "one",
        );
    }
}

fn messages() -> usize {
    std::env::var("COURIER_BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(MESSAGES)
}

/// Payments `<prefix>-<i>` as (id, JSON body), to [`ACCOUNTS`] accounts.
fn payments(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let body = serde_json::json!({ "payment": id, "account": format!("{prefix}-{}", i % ACCOUNTS), "amount_cents": 100 });
            (id, body.to_string())
        })
        .collect()
}

/// Where a run's replies come from.
enum Replies {
    RabbitMq(lapin::Consumer),
    Kafka(StreamConsumer),
}

impl Replies {
    /// The next reply's correlation id.
    async fn next(&mut self) -> String {
        let wait = Duration::from_secs(60);
        match self {
            Replies::RabbitMq(consumer) => {
                let reply =
                    tokio::time::timeout(wait, consumer.next()).await.expect("a reply").expect("open").expect("ok");
                reply.properties.correlation_id().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default()
            }
            Replies::Kafka(reader) => {
                let record = tokio::time::timeout(wait, reader.recv()).await.expect("a reply").expect("reply");
                record
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "courier-correlation-id").and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            }
        }
    }
}

/// Where a run's requests go.
enum Requests {
    RabbitMq(Box<RawClient>),
    Kafka(KafkaClient),
}

impl Requests {
    async fn publish(&self, queue: &str, replies: &str, requests: &[(String, String)]) {
        match self {
            Requests::RabbitMq(client) => client.publish_requests(queue, replies, requests).await,
            Requests::Kafka(client) => client.publish_requests(queue, replies, requests, PARTITIONS).await,
        }
    }
}

/// One row: the ledger at batch size `size` on `broker`.
async fn run(broker: Broker, size: usize, mock: &mut MockKafkaProcess) -> Figures {
    let bootstrap = mock.bootstrap.clone();
    let bootstrap = bootstrap.as_str();
    let messages = messages();
    let (queue, replies) = names("bench-ledger");
    let prefix = queue.trim_end_matches(".requests").to_owned();
    let (broker_url, requests) = match broker {
        Broker::RabbitMq => {
            let client = RawClient::connect().await;
            client.declare(&queue).await;
            client.declare(&replies).await;
            (url(), Requests::RabbitMq(Box::new(client)))
        }
        Broker::Kafka => (format!("kafka://{bootstrap}"), Requests::Kafka(KafkaClient::new(bootstrap))),
    };
    let (inbox, batch) = (courier_tests::postgres::url(), size.to_string());
    let partitions = PARTITIONS.to_string();
    let mut args = vec!["--broker", &broker_url, "--queue", &queue, "--replies", &replies, "--inbox", &inbox];
    args.extend(["--concurrency", CONCURRENCY, "--retry-delays", "", "--batch-size", &batch]);
    if broker == Broker::Kafka {
        args.extend(["--ordering", "key", "--partitions", &partitions, "--kafka-property", "fetch.wait.max.ms=10"]);
    }
    if broker == Broker::Kafka {
        for topic in [queue.clone(), replies.clone(), format!("{queue}.dlq"), format!("{queue}.parking")] {
            mock.command(&format!("create {topic} {PARTITIONS}"));
        }
    }
    requests.publish(&queue, &replies, &payments(&prefix, 0..messages)).await;
    // Fresh statistics, as autovacuum keeps them (it is off on the test machine's
    // PostgreSQL): without any, the planner sums a batch's accounts by scanning the table.
    let database = courier_tests::postgres::connect().await;
    database.batch_execute("ANALYZE ledger_entries; ANALYZE courier_inbox").await.expect("analyze");
    let mut process = Process::start("ledger", &format!("bench-ledger-{size}"), &args, &[("RUST_LOG", "warn")]);
    let pid = process.pid();
    let mut replies_in = match broker {
        Broker::RabbitMq => {
            let client = RawClient::connect().await;
            let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
            let consumer = client
                .channel
                .basic_consume(replies.as_str().into(), "".into(), options, FieldTable::default())
                .await
                .expect("consume replies");
            Replies::RabbitMq(consumer)
        }
        Broker::Kafka => Replies::Kafka(reader(bootstrap, &replies, PARTITIONS)),
    };

    // Throughput: the backlog drained, from the first reply to the last.
    replies_in.next().await;
    let (start, cpu_start) = (Instant::now(), cpu_seconds(pid));
    for _ in 1..messages {
        replies_in.next().await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = (messages - 1) as f64 / elapsed;
    let cpu_per_10k = (cpu_seconds(pid) - cpu_start) / (messages - 1) as f64 * 10_000.0;

    // Latency at half the peak rate: payments published one by one on a schedule.
    let total = (rate / 2.0 * LATENCY_PHASE.as_secs_f64()) as usize;
    let interval = LATENCY_PHASE.div_f64(total.max(1) as f64);
    let probes = payments(&format!("{prefix}-lat"), 0..total);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // Every probe due by now goes out together: a publish waits for its acknowledgement.
    let publisher = async {
        let phase_start = Instant::now();
        let mut next = 0;
        while next < total {
            if let Some(wait) = (phase_start + interval * next as u32).checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let due =
                ((phase_start.elapsed().as_secs_f64() / interval.as_secs_f64()) as usize + 1).clamp(next + 1, total);
            let now = Instant::now();
            sent.lock().expect("sent").extend(probes[next..due].iter().map(|(id, _)| (id.clone(), now)));
            requests.publish(&queue, &replies, &probes[next..due]).await;
            next = due;
        }
    };
    let collector = async {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            let id = replies_in.next().await;
            if let Some(at) = sent.lock().expect("sent").remove(&id) {
                latencies.push(at.elapsed());
            }
        }
        latencies
    };
    let ((), mut latencies) = tokio::join!(publisher, collector);
    let rss_mib = peak_rss_mib(pid);
    assert!(process.running(), "the ledger died:\n{}", process.tail());
    process.terminate();
    if broker == Broker::RabbitMq {
        cleanup(&queue, &replies).await;
    }
    let name = if size == 1 { "one request per call".to_owned() } else { format!("batches of {size}") };
    Figures {
        name,
        rate,
        cpu_per_10k,
        p50: percentile(&mut latencies, 50.0),
        p99: percentile(&mut latencies, 99.0),
        rss_mib,
    }
}
