//! Every alert of `deploy/prometheus/alerts.yml` fired by its real cause in one live run:
//! real workers and gateways on RabbitMQ and the Kafka mock cluster, Debian's Prometheus
//! with the project's rules unchanged (`for:` durations and windows included) and its
//! Alertmanager. It lasts about 20 minutes, so it is not part of the test command (whose
//! promtool tests cover every alert); run it after changing a rule:
//!
//! ```sh
//! cargo test -p courier-tests --test rabbitmq alert_drill -- --ignored --nocapture
//! ```
//!
//! It prints, for each alert, how long after its cause began it fired in Prometheus and
//! whether the Alertmanager holds it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use courier_tests::{
    alerting::{Server, alerts},
    dlq::{Drill, request},
    http::{free_port, post},
    kafka::{KafkaClient, MockKafkaProcess},
    process::Process,
    rabbitmq::{RabbitDrill, greeter_env, url},
};

/// Longer than the slowest alert takes from its cause (a growing dead-letter queue and a
/// stuck partition: about 17 minutes).
const PATIENCE: Duration = Duration::from_secs(25 * 60);

/// (alert, job whose cause fires it).
const EXPECTED: [(&str, &str); 13] = [
    ("CourierDeadLetters", "dead-letters"),
    ("CourierErrorRateHigh", "dead-letters"),
    ("CourierDeadLetterQueueGrowing", "dead-letters"),
    ("CourierOutputsRefused", "refused"),
    ("CourierBreakerOpen", "outage"),
    ("CourierQueueBacklog", "outage"),
    ("CourierPartitionStuck", "stuck"),
    ("CourierConsumerLagHigh", "stuck"),
    ("CourierStalled", "stuck"),
    ("CourierWorkerNotReady", "not-ready"),
    ("CourierTargetDown", "gone"),
    ("CourierGatewayErrors", "gateway"),
    ("CourierGatewaySlow", "gateway"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a live run of about 20 minutes (deploy/README.md, Alerts)"]
async fn every_alert_fires_from_its_cause() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml"))
        .expect("alerts.yml");
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(EXPECTED.iter().any(|(a, _)| *a == alert.trim()), "{alert} has no cause in this drill: add one");
    }
    let mut jobs: Vec<(&str, String)> = Vec::new();
    let mut processes: Vec<Process> = Vec::new();
    let mut drill = RabbitDrill::new("drill").await;

    // dead-letters: an empty message (a permanent failure) twice a second.
    let addr = local();
    let (dl_queue, dl_replies) = names("drill-dl");
    processes.push(greeter_env("drill-dl", &dl_queue, &dl_replies, &["--http-addr", &addr], &[]));
    jobs.push(("dead-letters", addr));

    // outage: the dependency is down with the breaker on, and 1,500 requests wait.
    let addr = local();
    let (outage_queue, outage_replies) = names("drill-outage");
    let env = [("GREETER_DEPENDENCY_DOWN", "1")];
    processes.push(greeter_env("drill-outage", &outage_queue, &outage_replies, &["--http-addr", &addr], &env));
    jobs.push(("outage", addr));
    let waiting: Vec<_> = (0..1_500).map(|n| request(&format!("outage-{n}"), &outage_replies)).collect();
    drill.publish(&outage_queue, waiting).await;

    // refused: requests ask for their replies on a queue that refuses every publish.
    let addr = local();
    let (refused_queue, refused_replies) = names("drill-refused");
    processes.push(greeter_env("drill-refused", &refused_queue, &refused_replies, &["--http-addr", &addr], &[]));
    jobs.push(("refused", addr));
    // Allowed as a reply target (`--reply-allow` is `*.replies`).
    let refusing = refused_replies.replace(".replies", "-refusing.replies");
    declare_refusing(&refusing).await;

    // stuck: a Kafka worker whose handler does not return (within a handler timeout of
    // 2 h), 1,500 requests behind it.
    let (stuck_queue, stuck_replies) = names("drill-stuck");
    let stuck_cluster = kafka_cluster(&stuck_queue, &stuck_replies);
    let port = free_port();
    let env = [("GREETER_LATENCY_MS", "3600000"), ("COURIER_HANDLER_TIMEOUT", "2h")];
    processes.push(kafka_greeter("drill-stuck", &stuck_cluster, &stuck_queue, &stuck_replies, port, &env));
    jobs.push(("stuck", format!("127.0.0.1:{port}")));
    let stuck_client = KafkaClient::new(&stuck_cluster.bootstrap);
    stuck_client.publish_greetings(&stuck_queue, &stuck_replies, "s", 1_500).await;

    // not-ready: a Kafka worker whose only broker goes down.
    let (lost_queue, lost_replies) = names("drill-lost");
    let mut lost_cluster = kafka_cluster(&lost_queue, &lost_replies);
    let port = free_port();
    processes.push(kafka_greeter("drill-lost", &lost_cluster, &lost_queue, &lost_replies, port, &[]));
    jobs.push(("not-ready", format!("127.0.0.1:{port}")));
    lost_cluster.command("down 1");

    // gateway: no worker answers its queue (which exists: a request to a missing queue is
    // refused at once); a request every 500 ms waits out its 6 s timeout.
    let gateway_port = free_port();
    let (gateway_queue, gateway_replies) = names("drill-gateway");
    declare(&gateway_queue, lapin::types::FieldTable::default()).await;
    let listen = format!("127.0.0.1:{gateway_port}");
    let args = [
        "--broker",
        &url(),
        "--queue",
        &gateway_queue,
        "--replies",
        &gateway_replies,
        "--listen",
        &listen,
        "--timeout",
        "6s",
    ];
    let mut gateway = Process::start("gateway", "drill-gateway", &args, &[]);
    gateway.wait_for_log("Gateway listening", Duration::from_secs(30));
    processes.push(gateway);
    jobs.push(("gateway", listen));

    // gone: a target nothing listens on.
    jobs.push(("gone", format!("127.0.0.1:{}", free_port())));

    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook");
    let alertmanager = Server::alertmanager(&format!("http://{}/", webhook.local_addr().expect("address")));
    let prometheus = Server::prometheus_scraping(&jobs, alertmanager.port);
    let started = Instant::now();

    // The causes that go on: dead letters, refused replies, gateway requests.
    let load = tokio::spawn(async move {
        let mut drill = RabbitDrill::new("drill-load").await;
        for n in 0.. {
            let mut empty = request(&format!("dl-{n}"), &dl_replies);
            empty.payload = r#"{"message":""}"#.into();
            let refused = request(&format!("refused-{n}"), &refusing);
            let (dl_queue, refused_queue) = (dl_queue.clone(), refused_queue.clone());
            // In a task of its own: a connection the broker closed (another test closing
            // every connection, say) panics there, and the next tick connects again.
            let tick = tokio::spawn(async move {
                drill.publish(&dl_queue, vec![empty]).await;
                drill.publish(&refused_queue, vec![refused]).await;
                drill
            });
            drill = match tick.await {
                Ok(drill) => drill,
                Err(_) => RabbitDrill::new("drill-load").await,
            };
            tokio::spawn(async move { post(gateway_port, "/process", r#"{"message":"Ada"}"#, &[]).await });
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let mut fired: BTreeMap<(String, String), Duration> = BTreeMap::new();
    while started.elapsed() < PATIENCE && fired.len() < EXPECTED.len() {
        for alert in alerts(prometheus.port, "/api/v1/alerts?state=firing").await {
            let key = (alert["labels"]["alertname"].as_str().unwrap_or_default(), alert["labels"]["job"].as_str());
            if let (name, Some(job)) = key
                && alert["state"] == "firing"
                && EXPECTED.contains(&(name, job))
                && !fired.contains_key(&(name.to_owned(), job.to_owned()))
            {
                println!("{name} ({job}) firing after {:?}", started.elapsed());
                fired.insert((name.to_owned(), job.to_owned()), started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    load.abort();
    let in_alertmanager = alerts(alertmanager.port, "/api/v2/alerts").await;
    println!("\n| alert | cause (job) | firing after | in the Alertmanager |\n|---|---|---:|---|");
    for (name, job) in EXPECTED {
        let held = in_alertmanager.iter().any(|a| a["labels"]["alertname"] == name && a["labels"]["job"] == job);
        let after = fired.get(&(name.to_owned(), job.to_owned())).map_or("never".to_owned(), |d| minutes(*d));
        println!("| `{name}` | {job} | {after} | {} |", if held { "yes" } else { "no" });
    }
    let missing: Vec<_> =
        EXPECTED.iter().filter(|(n, j)| !fired.contains_key(&((*n).to_owned(), (*j).to_owned()))).collect();
    assert!(missing.is_empty(), "never fired: {missing:?}\n{}", prometheus.log());
    for mut process in processes {
        process.kill9();
    }
}

fn names(label: &str) -> (String, String) {
    courier_tests::rabbitmq::names(label)
}

/// `127.0.0.1:<a free port>`.
fn local() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn minutes(d: Duration) -> String {
    format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
}

/// A queue capped at no message with `reject-publish`: the broker nacks every publish.
async fn declare_refusing(name: &str) {
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
    arguments.insert("x-overflow".into(), lapin::types::AMQPValue::LongString("reject-publish".into()));
    declare(name, arguments).await;
}

/// A durable queue with `arguments`, as a worker would declare it.
async fn declare(name: &str, arguments: lapin::types::FieldTable) {
    let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default()).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let options = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), options, arguments).await.expect("declare");
}

/// A mock cluster of one broker with the worker's topics, one partition each.
fn kafka_cluster(queue: &str, replies: &str) -> MockKafkaProcess {
    let topics = [
        queue.to_owned(),
        replies.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.parking"),
        format!("{queue}.retry.1s"),
    ];
    let specs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    MockKafkaProcess::start(&specs)
}

fn kafka_greeter(
    label: &str,
    cluster: &MockKafkaProcess,
    queue: &str,
    replies: &str,
    port: u16,
    env: &[(&str, &str)],
) -> Process {
    let broker = format!("kafka://{}", cluster.bootstrap);
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "--broker",
        &broker,
        "--queue",
        queue,
        "--replies",
        replies,
        "--instance",
        label,
        "--retry-delays",
        "1s",
        "--partitions",
        "1",
        "--concurrency",
        "1",
        "--http-addr",
        &addr,
        "--kafka-property",
        "fetch.wait.max.ms=10",
    ];
    let mut process = Process::start("greeter", label, &args, env);
    process.wait_for_log("Partitions assigned.", Duration::from_secs(60));
    process
}
