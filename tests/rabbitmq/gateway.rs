//! The HTTP gateway and a greeter as real processes, on RabbitMQ and on Kafka: HTTP in,
//! reply out; bad input; a worker's refusal; a timeout; the greeter's metrics and
//! readiness (Kafka: the broker goes down and comes back, seen within two seconds and
//! three, while the gateway keeps answering within its timeout). On RabbitMQ, the bounds
//! on clients: a head or a body that never ends, idle connections past the cap, and
//! content types (and cross-site requests) that must not reach a worker.

use std::time::{Duration, Instant};

use courier::{
    contract::{
        codec::Codec,
        error_reply::ErrorReply,
        failure::{FailureKind, fingerprint},
    },
    testing::Harness,
};
use courier_tests::{
    http::{free_port, get, metric, post, post_as, wait_for_status},
    kafka::MockKafkaProcess,
    process::Process,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PATIENCE: Duration = Duration::from_secs(30);

struct Names {
    test: String,
    queue: String,
    replies: String,
    gateway_replies: String,
}

fn names(test: &str) -> Names {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    Names {
        test: test.to_owned(),
        queue: format!("{test}-{id}.requests"),
        replies: format!("{test}-{id}.replies"),
        gateway_replies: format!("{test}-{id}-gateway.replies"),
    }
}

/// Start a greeter (metrics on `metrics_port`) and a gateway (on `gateway_port`) with
/// `broker` flags and `gateway_flags`; `kafka` waits for partition assignment.
fn start(
    names: &Names,
    broker: &[String],
    (metrics_port, gateway_port): (u16, u16),
    kafka: bool,
    gateway_flags: &[&str],
) -> (Process, Process) {
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut greeter_args: Vec<String> = broker.to_vec();
    greeter_args.extend(
        ["--queue", &names.queue, "--replies", &names.replies, "--retry-delays=", "--http-addr", &metrics_addr]
            .map(String::from),
    );
    let greeter_args: Vec<&str> = greeter_args.iter().map(String::as_str).collect();
    let label = if kafka { "kafka" } else { "rabbitmq" };
    let mut greeter = Process::start("greeter", &format!("gateway-greeter-{label}-{}", names.test), &greeter_args, &[]);
    greeter.wait_for_log("Consuming.", PATIENCE);

    let listen = format!("127.0.0.1:{gateway_port}");
    let mut gateway_args: Vec<String> = broker.to_vec();
    gateway_args.extend(
        ["--queue", &names.queue, "--replies", &names.gateway_replies, "--listen", &listen, "--timeout", "2s"]
            .map(String::from),
    );
    gateway_args.extend(gateway_flags.iter().map(|flag| (*flag).to_owned()));
    let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    let mut gateway = Process::start("gateway", &format!("gateway-{label}-{}", names.test), &gateway_args, &[]);
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
    assert_eq!(error_of(body.as_bytes()), ["decode", "invalid_json"], "{body}");
    let (status, body) = post(gateway_port, "/process", r#"{"name":"Ada"}"#, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(body.as_bytes()), ["schema", "schema_violation"], "{body}");
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
    other_encodings(gateway_port).await;
    outage().await;

    assert!(greeter.terminate(), "the greeter stops cleanly");
    let (status, body) = post(gateway_port, "/process", r#"{"message":"Bob"}"#, &[]).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains(r#""code":"reply_timeout""#), "{body}");
    let (_, metrics) = get(gateway_port, "/metrics").await;
    assert_eq!(metric(&metrics, r#"courier_gateway_requests_total{status="504"}"#), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"courier_gateway_requests_total{status="200"}"#), 4.0, "{metrics}");
}

/// The article's form value (`message=Ada`), JSON labelled as a form (`curl -d`), and a
/// protobuf body (answered in protobuf).
async fn other_encodings(gateway_port: u16) {
    use prost::Message as _;

    let form =
        post_as(gateway_port, "/process", "application/x-www-form-urlencoded", b"message=Ada+L%C3%B6w", &[]).await;
    assert_eq!(
        (form.status, form.body.as_slice()),
        (200, r#"{"result":"Hello, Ada Löw"}"#.as_bytes()),
        "{}",
        form.head
    );
    let curl =
        post_as(gateway_port, "/process", "application/x-www-form-urlencoded", br#"{"message":"Bo"}"#, &[]).await;
    assert_eq!((curl.status, curl.body.as_slice()), (200, r#"{"result":"Hello, Bo"}"#.as_bytes()), "curl -d '{{…}}'");
    let form = post_as(gateway_port, "/process", "application/x-www-form-urlencoded", b"name=Ada", &[]).await;
    let text = String::from_utf8_lossy(&form.body);
    assert_eq!(form.status, 400, "a form that is no greeter request: {text}");
    assert_eq!(error_of(&form.body), ["schema", "schema_violation"], "{text}");

    let request = greeter::Request { message: "Ada".into() }.encode_to_vec();
    let reply = post_as(gateway_port, "/process", "application/x-protobuf", &request, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(reply.head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{}", reply.head);
    assert_eq!(
        greeter::Reply::decode(reply.body.as_slice()).ok(),
        Some(greeter::Reply { result: "Hello, Ada".into() })
    );
    let refused = post_as(gateway_port, "/process", "application/x-protobuf", b"\x0a\x05Ad", &[]).await;
    let text = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 400, "not a greeter.Request: {text}");
    assert!(refused.head.to_ascii_lowercase().contains("content-type: application/json"), "{}", refused.head);
    assert_eq!(error_of(&refused.body), ["decode", "invalid_protobuf"], "{text}");
}

/// The `kind` and `code` of one of the gateway's own error bodies (the contract's error
/// reply, in JSON); empty when the body is not one.
fn error_of(body: &[u8]) -> [String; 2] {
    let reply = ErrorReply::decode(Codec::Json, body).unwrap_or_default();
    [reply.error.kind, reply.error.code]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_rabbitmq() {
    let names = names("gateway");
    let (mut greeter, gateway, metrics_port, gateway_port) = start_on_rabbitmq(&names, &[]);
    exercise(&mut greeter, metrics_port, gateway_port, async || {}).await;
    cleanup(&names, [greeter, gateway]).await;
}

/// The mock cluster with the topics of `names`, and the broker flags pointing at it.
fn kafka_cluster(names: &Names) -> (MockKafkaProcess, Vec<String>) {
    let topics = [
        names.queue.clone(),
        names.replies.clone(),
        names.gateway_replies.clone(),
        format!("{}.dlq", names.queue),
        format!("{}.parking", names.queue),
    ];
    let specs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    let cluster = MockKafkaProcess::start(&specs);
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
    (cluster, broker)
}

/// Poll `GET /readyz` every 50 ms until it answers `status`; how long that took.
async fn time_to_status(port: u16, status: u16) -> Duration {
    let started = std::time::Instant::now();
    while get(port, "/readyz").await.0 != status {
        assert!(started.elapsed() < PATIENCE, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// The broker goes down for 15 s under load: the worker's and the gateway's `/readyz` turn
/// 503 within 2 s and 200 again within 3 s of its return; every `POST /process` meanwhile
/// is answered within the gateway's `--timeout` (2 s) plus 0.5 s; no request is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_is_seen_within_two_seconds_and_the_gateway_answers_in_time() {
    let names = names("outage");
    let (mut cluster, broker) = kafka_cluster(&names);
    let (metrics_port, gateway_port) = (free_port(), free_port());
    let (mut greeter, _gateway) = start(&names, &broker, (metrics_port, gateway_port), true, &[]);
    wait_for_status(metrics_port, "/readyz", 200, PATIENCE).await;
    wait_for_status(gateway_port, "/readyz", 200, PATIENCE).await;
    let mut client = courier_tests::kafka::KafkaClient::new(&cluster.bootstrap);
    let mut ids = client.publish_greetings(&names.queue, &names.replies, "before", 3_000).await;

    // HTTP requests all along, each timed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posting = tokio::spawn({
        let stop = std::sync::Arc::clone(&stop);
        async move {
            let mut slowest = (Duration::ZERO, 0);
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let (status, _) = post(gateway_port, "/process", r#"{"message":"Ada"}"#, &[]).await;
                slowest = slowest.max((started.elapsed(), status));
                *statuses.entry(status).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (slowest, statuses)
        }
    });

    cluster.command("down 1");
    let (worker_down, gateway_down) =
        tokio::join!(time_to_status(metrics_port, 503), time_to_status(gateway_port, 503));
    tokio::time::sleep(Duration::from_secs(15) - worker_down.max(gateway_down)).await;
    cluster.command("up 1");
    let (worker_up, gateway_up) = tokio::join!(time_to_status(metrics_port, 200), time_to_status(gateway_port, 200));
    ids.extend(client.publish_greetings(&names.queue, &names.replies, "after", 1_000).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ((slowest, status), statuses) = posting.await.expect("posting task");

    let mut seen = courier_tests::replies::Replies::default();
    client.collect_replies(&names.replies, 1, ids.len(), &mut seen, PATIENCE, |_| false).await;
    println!(
        "kafka outage: /readyz 503 after {worker_down:?} (worker) and {gateway_down:?} (gateway), 200 again after \
         {worker_up:?} and {gateway_up:?}; POST /process statuses {statuses:?}, slowest {slowest:?} ({status}); \
         {} of {} answered",
        seen.by_id.len(),
        ids.len()
    );
    let two = Duration::from_secs(2);
    assert!(worker_down <= two && gateway_down <= two, "not ready too late");
    // Reconnecting waits out librdkafka's reconnect backoff and its next statistics (0.5 s):
    // about 1 s, seen at 2.3 s once with the other tests of this binary beside it.
    let three = Duration::from_secs(3);
    assert!(worker_up <= three && gateway_up <= three, "ready again too late");
    assert!(slowest <= Duration::from_millis(2_500), "a POST took {slowest:?}");
    assert!(statuses.get(&200).is_some_and(|n| *n > 0) && statuses.get(&503).is_some_and(|n| *n > 0), "{statuses:?}");
    assert!(seen.missing(&ids).is_empty(), "lost {}\n{}", seen.missing(&ids).len(), greeter.tail());
    assert!(greeter.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_kafka() {
    let names = names("gateway");
    let (mut cluster, broker) = kafka_cluster(&names);
    let (metrics_port, gateway_port) = (free_port(), free_port());
    let (mut greeter, _gateway) = start(&names, &broker, (metrics_port, gateway_port), true, &[]);
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

/// A greeter and a gateway with `gateway_flags` on RabbitMQ: (greeter, gateway, metrics
/// port, gateway port).
fn start_on_rabbitmq(names: &Names, gateway_flags: &[&str]) -> (Process, Process, u16, u16) {
    let broker = vec!["--broker".to_owned(), courier_tests::rabbitmq::url()];
    let ports = (free_port(), free_port());
    let (greeter, gateway) = start(names, &broker, ports, false, gateway_flags);
    (greeter, gateway, ports.0, ports.1)
}

/// Stop the processes (else they declare their queues again), then delete the queues.
async fn cleanup(names: &Names, processes: [Process; 2]) {
    drop(processes);
    courier_tests::rabbitmq::cleanup(&names.queue, &names.replies).await;
    courier_tests::rabbitmq::RabbitHarness::new().await.delete(std::slice::from_ref(&names.gateway_replies)).await;
}

/// What the gateway sent back on `stream` until it closed the connection (a reset counts as
/// closed); `None` while it is still open after `patience`.
async fn until_closed(stream: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let reading = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(patience, reading).await.ok()?;
    Some(answer)
}

/// "closed after …", or "still open after …".
fn outcome(answer: Option<&[u8]>, took: Duration) -> String {
    if answer.is_some() { format!("closed after {took:?}") } else { format!("still open after {took:?}") }
}

/// Connect, send `sent`, and wait for the gateway to close the connection: what it answered
/// and how long after the connect.
async fn sent_then_silent(port: u16, sent: &[u8], patience: Duration) -> (Option<Vec<u8>>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the gateway");
    stream.write_all(sent).await.expect("send");
    let answer = until_closed(&mut stream, patience).await;
    (answer, started.elapsed())
}

/// Half a request head, and nothing at all: each connection is closed (hyper answers no
/// 408 to a head it never got) within `--header-timeout` (1 s) and three times that.
/// Without the bound both stay open: `axum::serve` sets no header read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_closes_a_connection_whose_headers_never_end() {
    let names = names("gw-headers");
    let (greeter, gateway, _, port) = start_on_rabbitmq(&names, &["--header-timeout", "1s"]);
    let bound = Duration::from_secs(1);
    let half = b"POST /process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl";
    let ((half_answer, half_took), (idle_answer, idle_took)) =
        tokio::join!(sent_then_silent(port, half, 10 * bound), sent_then_silent(port, b"", 10 * bound));
    println!(
        "gateway --header-timeout 1s: half the headers {}, no bytes {}",
        outcome(half_answer.as_deref(), half_took),
        outcome(idle_answer.as_deref(), idle_took)
    );
    for (what, answer, took) in [("half the headers", half_answer, half_took), ("no bytes", idle_answer, idle_took)] {
        let answer = answer.unwrap_or_else(|| panic!("{what}: the connection is still open after {took:?}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || text.starts_with("HTTP/1.1 408"), "{what}: {text}");
        assert!(took >= bound - Duration::from_millis(100) && took <= 3 * bound, "{what}: closed after {took:?}");
    }
    cleanup(&names, [greeter, gateway]).await;
}

/// A worker's own endpoints (`--http-addr`: `/metrics`, `/readyz`) run the same accept
/// loop: half a request head is cut off within their 5 s bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_endpoints_close_a_connection_whose_headers_never_end() {
    let names = names("worker-headers");
    let (greeter, gateway, metrics_port, _) = start_on_rabbitmq(&names, &[]);
    let bound = Duration::from_secs(5);
    let half = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc";
    let (answer, took) = sent_then_silent(metrics_port, half, 4 * bound).await;
    println!("a worker's /metrics: half the headers {}", outcome(answer.as_deref(), took));
    let answer = answer.unwrap_or_else(|| panic!("the connection is still open after {took:?}"));
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took <= 2 * bound, "closed after {took:?}");
    cleanup(&names, [greeter, gateway]).await;
}

/// Headers in full, then half the body, a byte more every 200 ms for 0.6 s, then silence:
/// 408 with `code` `body_timeout` and the connection closed, within `--body-timeout` (1 s)
/// of the headers and three times that: trickling does not extend it. Without the bound
/// the gateway waits for the body forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_408_to_a_body_that_never_ends() {
    let names = names("gw-body");
    let (greeter, gateway, metrics_port, port) = start_on_rabbitmq(&names, &["--body-timeout", "1s"]);
    let bound = Duration::from_secs(1);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the gateway");
    let head = "POST /process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("the headers");
    let started = Instant::now();
    stream.write_all(br#"{"message":"#).await.expect("half the body");
    for byte in b"Ada" {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&[*byte]).await.expect("a byte more");
    }
    let answer = until_closed(&mut stream, 10 * bound).await;
    let took = started.elapsed();
    println!("gateway --body-timeout 1s: half a body, trickled for 0.6 s: {}", outcome(answer.as_deref(), took));
    let answer = answer.unwrap_or_else(|| panic!("no answer and still open after {took:?}"));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"body_timeout""#), "{text}");
    assert!(took >= bound - Duration::from_millis(100) && took <= 3 * bound, "answered after {took:?}");
    let (_, metrics) = get(metrics_port, "/metrics").await;
    assert_eq!(metric(&metrics, r#"courier_messages_received_total{worker="greeter"}"#), 0.0, "{metrics}");
    cleanup(&names, [greeter, gateway]).await;
}

/// The descriptors the process `pid` holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

/// 200 idle connections against `--max-connections 8`: the gateway holds at most 8 of them
/// open (the rest wait in the kernel's backlog); once the clients go, a `POST /process` is
/// answered at once. Without the cap the gateway accepts all 200: a descriptor each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_holds_no_more_connections_than_its_cap() {
    const CAP: usize = 8;
    let names = names("gw-cap");
    let flags = ["--max-connections", "8", "--header-timeout", "5s"];
    let (greeter, gateway, _, port) = start_on_rabbitmq(&names, &flags);
    let (status, body) = post(port, "/process", r#"{"message":"Ada"}"#, &[]).await;
    assert_eq!(status, 200, "{body}");
    let baseline = open_fds(gateway.pid());

    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.expect("connect (the backlog takes it)"));
    }
    // Well within --header-timeout, so that none of the 8 has been closed yet.
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(open_fds(gateway.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(idle);
    let started = Instant::now();
    let (status, body) = post(port, "/process", r#"{"message":"Bob"}"#, &[]).await;
    let answered = started.elapsed();
    println!(
        "gateway --max-connections 8: 200 idle connections, the gateway held {most} descriptors (at rest \
         {baseline}); POST /process once they left: {status} after {answered:?}"
    );
    assert!(most <= baseline + CAP + 4, "{most} descriptors open, {baseline} at rest");
    assert_eq!(status, 200, "{body}");
    assert!(answered < Duration::from_secs(3), "answered after {answered:?}");
    cleanup(&names, [greeter, gateway]).await;
}

/// JSON sent as `text/plain` (what a cross-site HTML form can send) or with no
/// `Content-Type` is refused with 415, and a browser's cross-site form with 403; the greeter
/// receives none of them, then the one JSON request. Without the fix the gateway read any
/// body that is a JSON object as JSON and sent it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_json_sent_as_text_plain() {
    let names = names("gw-media");
    let (greeter, gateway, metrics_port, port) = start_on_rabbitmq(&names, &[]);
    let json = br#"{"message":"Ada"}"#;
    let refused = post_as(port, "/process", "text/plain", json, &[]).await;
    let text = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 415, "{text}");
    assert!(text.contains(r#""code":"unsupported_content_type""#), "{text}");
    let bare = format!(
        "POST /process HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    let (answer, _) = sent_then_silent(port, &[bare.as_bytes(), json].concat(), PATIENCE).await;
    let answer = String::from_utf8_lossy(answer.as_deref().unwrap_or_default()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 415"), "no Content-Type: {answer}");
    for header in [("Sec-Fetch-Site", "cross-site"), ("Origin", "http://elsewhere.example")] {
        let form = post_as(port, "/process", "application/x-www-form-urlencoded", b"message=Ada", &[header]).await;
        let text = String::from_utf8_lossy(&form.body);
        assert_eq!(form.status, 403, "{header:?}: {text}");
        assert!(text.contains(r#""code":"cross_site_request""#), "{text}");
    }
    let (_, metrics) = get(metrics_port, "/metrics").await;
    let received = r#"courier_messages_received_total{worker="greeter"}"#;
    assert_eq!(metric(&metrics, received), 0.0, "{metrics}");
    let (status, body) = post(port, "/process", r#"{"message":"Ada"}"#, &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"result":"Hello, Ada"}"#));
    let (_, metrics) = get(metrics_port, "/metrics").await;
    assert_eq!(metric(&metrics, received), 1.0, "{metrics}");
    println!("gateway: text/plain and no Content-Type 415, cross-site forms 403; the greeter received 0, then 1");
    cleanup(&names, [greeter, gateway]).await;
}
