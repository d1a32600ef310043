//! The HTTP gateway and a greeter as real processes, on RabbitMQ and on Kafka: HTTP in,
//! reply out; bad input; a worker's refusal; a timeout; the greeter's metrics and
//! readiness (Kafka: the broker goes down and comes back).

use std::time::Duration;

use courier::{
    contract::failure::{FailureKind, fingerprint},
    testing::Harness,
};
use courier_tests::{
    http::{free_port, get, metric, post, wait_for_status},
    kafka::MockKafkaProcess,
    process::Process,
};

const PATIENCE: Duration = Duration::from_secs(30);

struct Names {
    queue: String,
    replies: String,
    gateway_replies: String,
}

fn names(test: &str) -> Names {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    Names {
        queue: format!("{test}-{id}.requests"),
        replies: format!("{test}-{id}.replies"),
        gateway_replies: format!("{test}-{id}-gateway.replies"),
    }
}

/// Start a greeter (metrics on `metrics_port`) and a gateway (on `gateway_port`) with
/// `broker` flags; `kafka` waits for partition assignment.
fn start(names: &Names, broker: &[String], metrics_port: u16, gateway_port: u16, kafka: bool) -> (Process, Process) {
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut greeter_args: Vec<String> = broker.to_vec();
    greeter_args.extend(
        ["--queue", &names.queue, "--replies", &names.replies, "--retry-delays=", "--http-addr", &metrics_addr]
            .map(String::from),
    );
    let greeter_args: Vec<&str> = greeter_args.iter().map(String::as_str).collect();
    let label = if kafka { "kafka" } else { "rabbitmq" };
    let mut greeter = Process::start("greeter", &format!("gateway-greeter-{label}"), &greeter_args, &[]);
    greeter.wait_for_log("Consuming.", PATIENCE);

    let listen = format!("127.0.0.1:{gateway_port}");
    let mut gateway_args: Vec<String> = broker.to_vec();
    gateway_args.extend(
        ["--queue", &names.queue, "--replies", &names.gateway_replies, "--listen", &listen, "--timeout", "2s"]
            .map(String::from),
    );
    let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    let mut gateway = Process::start("gateway", &format!("gateway-{label}"), &gateway_args, &[]);
    gateway.wait_for_log("Gateway listening", PATIENCE);
    if kafka {
        greeter.wait_for_log("Partitions assigned.", PATIENCE);
        gateway.wait_for_log("Partitions assigned.", PATIENCE);
    }
    (greeter, gateway)
}

/// What both brokers must do; `outage` takes the broker away and back (or does nothing).
async fn exercise(greeter: &mut Process, metrics_port: u16, gateway_port: u16, outage: impl AsyncFnOnce()) {
    let (status, body) = post(gateway_port, "/process", r#"{"message":"Ada"}"#, &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"result":"Hello, Ada"}"#));
    let (status, body) = post(gateway_port, "/process", "not json", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""kind":"decode""#), "{body}");
    let (status, body) = post(gateway_port, "/process", r#"{"name":"Ada"}"#, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""kind":"schema""#), "{body}");
    let (status, body) = post(gateway_port, "/process", r#"{"message":" "}"#, &[]).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("empty_message"), "{body}");

    let (_, metrics) = get(metrics_port, "/metrics").await;
    assert_eq!(metric(&metrics, r#"courier_messages_received_total{worker="greeter"}"#), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"courier_messages_succeeded_total{worker="greeter"}"#), 1.0, "{metrics}");
    let permanent = fingerprint(FailureKind::Permanent, "greeter", "empty_message");
    let dead = format!(
        r#"courier_messages_dead_lettered_total{{fingerprint="{permanent}",kind="permanent",worker="greeter"}}"#
    );
    assert_eq!(metric(&metrics, &dead), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"courier_handler_duration_seconds_count{worker="greeter"}"#), 2.0, "{metrics}");

    assert_eq!(get(metrics_port, "/healthz").await.0, 200);
    wait_for_status(metrics_port, "/readyz", 200, PATIENCE).await;
    outage().await;

    assert!(greeter.terminate(), "the greeter stops cleanly");
    let (status, body) = post(gateway_port, "/process", r#"{"message":"Bob"}"#, &[]).await;
    assert_eq!(status, 504, "{body}");
    let (_, metrics) = get(gateway_port, "/metrics").await;
    assert_eq!(metric(&metrics, r#"courier_gateway_requests_total{status="504"}"#), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"courier_gateway_requests_total{status="200"}"#), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_rabbitmq() {
    let names = names("gateway");
    let broker = vec!["--broker".to_owned(), courier_tests::rabbitmq::url()];
    let (metrics_port, gateway_port) = (free_port(), free_port());
    let (mut greeter, _gateway) = start(&names, &broker, metrics_port, gateway_port, false);
    exercise(&mut greeter, metrics_port, gateway_port, async || {}).await;
    courier_tests::rabbitmq::cleanup(&names.queue, &names.replies).await;
    courier_tests::rabbitmq::RabbitHarness::new().await.delete(std::slice::from_ref(&names.gateway_replies)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_kafka() {
    let names = names("gateway");
    let topics = [
        names.queue.clone(),
        names.replies.clone(),
        names.gateway_replies.clone(),
        format!("{}.dlq", names.queue),
        format!("{}.parking", names.queue),
    ];
    let specs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    let mut cluster = MockKafkaProcess::start(&specs);
    let broker: Vec<String> = [
        "--broker",
        &format!("kafka://{}", cluster.bootstrap),
        "--partitions",
        "1",
        "--kafka-property",
        "fetch.wait.max.ms=10",
    ]
    .map(String::from)
    .to_vec();
    let (metrics_port, gateway_port) = (free_port(), free_port());
    let (mut greeter, _gateway) = start(&names, &broker, metrics_port, gateway_port, true);
    exercise(&mut greeter, metrics_port, gateway_port, async || {
        cluster.command("down 1");
        wait_for_status(metrics_port, "/readyz", 503, PATIENCE).await;
        wait_for_status(gateway_port, "/readyz", 503, PATIENCE).await;
        cluster.command("up 1");
        wait_for_status(metrics_port, "/readyz", 200, PATIENCE).await;
        wait_for_status(gateway_port, "/readyz", 200, PATIENCE).await;
    })
    .await;
}
