//! What operators see of a greeter on RabbitMQ: `/metrics` counters move as requests are
//! answered, retried and dead-lettered, and the request's trace id comes back in the
//! reply, the retry and the dead-letter record; a real Prometheus with the project's own
//! scrape config and alert rules fires the dead-letter alert.

use courier::contract::{
    failure::{FailureKind, fingerprint},
    headers as h, trace,
};
use courier_tests::{
    dlq::{Drill, collect, greeter, request},
    http::{free_port, get, metric},
    rabbitmq::RabbitDrill,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_trace_context_follow_each_outcome() {
    let mut drill = RabbitDrill::new("observe").await;
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A broken dependency: every request is retried once through a 200 ms tier, then dead-lettered.
    let _worker = greeter(&drill, "observe", true, &["--http-addr", &addr, "--retry-delays", "200ms"]);

    let mut traced = request("traced", &replies);
    traced.headers.insert(h::TRACEPARENT.into(), TRACEPARENT.into());
    let garbage = courier::Message { payload: "{not json".into(), ..courier::Message::default() };
    drill.publish(&queue, vec![traced, garbage]).await;

    let records = collect(&mut drill, &format!("{queue}.dlq"), |all| all.len() >= 2).await;
    let record = records.iter().find(|r| r.headers.get(h::CORRELATION_ID).map(String::as_str) == Some("traced"));
    let record = record.expect("the traced request was dead-lettered");
    let record_trace = record.headers.get(h::TRACEPARENT).expect("traceparent on the dead-letter record");
    assert_eq!(trace::trace_id(record_trace), Some(TRACE_ID), "same trace");
    assert_ne!(record_trace, TRACEPARENT, "the worker's own span is the parent");
    let is_traced = |m: &courier::Message| m.headers.get(h::CORRELATION_ID).map(String::as_str) == Some("traced");
    let error_replies = collect(&mut drill, &replies, |all| all.iter().any(is_traced)).await;
    let reply = error_replies.iter().find(|m| is_traced(m)).expect("an error reply");
    let reply_trace = reply.headers.get(h::TRACEPARENT).expect("traceparent on the error reply");
    assert_eq!(trace::trace_id(reply_trace), Some(TRACE_ID));

    // The reply is visible before the worker has its confirm and acks the request: wait
    // for the last delivery to settle.
    let mut text = String::new();
    for _ in 0..100 {
        text = get(port, "/metrics").await.1;
        if metric(&text, r#"courier_in_flight{worker="greeter"}"#) == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series(r#"courier_messages_received_total{worker="greeter"}"#),
        3.0,
        "two requests, one retry round:\n{text}"
    );
    let tier = format!(r#"courier_messages_retried_total{{tier="{queue}.retry.200ms",worker="greeter"}}"#);
    assert_eq!(series(&tier), 1.0, "{text}");
    assert_eq!(series(r#"courier_messages_failed_total{kind="transient",worker="greeter"}"#), 2.0, "{text}");
    assert_eq!(series(r#"courier_messages_failed_total{kind="decode",worker="greeter"}"#), 1.0, "{text}");
    let transient = fingerprint(FailureKind::Transient, "greeter", "dependency_down");
    let dead = format!(
        r#"courier_messages_dead_lettered_total{{fingerprint="{transient}",kind="transient",worker="greeter"}}"#
    );
    assert_eq!(series(&dead), 1.0, "{text}");
    assert_eq!(series(r#"courier_in_flight{worker="greeter"}"#), 0.0, "{text}");
    assert_eq!(series(r#"courier_ready{worker="greeter"}"#), 1.0, "{text}");
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the worker exports its spans there: a stand-in
/// collector sees it open an OTLP/gRPC (HTTP/2) connection after a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    use tokio::io::AsyncReadExt;
    let mut drill = RabbitDrill::new("otlp").await;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", collector.local_addr().expect("address"));
    let mut args = drill.flags();
    args.extend(["--instance", "otlp"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut worker = courier_tests::process::Process::start("greeter", "otlp", &args, &env);
    worker.wait_for_log("Consuming.", courier_tests::dlq::PATIENCE);
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    drill.publish(&queue, vec![request("exported", &replies)]).await;

    let accepted = tokio::time::timeout(courier_tests::dlq::PATIENCE, collector.accept()).await;
    let (mut stream, _) = accepted.expect("the worker connects to the collector").expect("accept");
    let mut preface = [0u8; 24];
    tokio::time::timeout(courier_tests::dlq::PATIENCE, stream.read_exact(&mut preface))
        .await
        .expect("the worker speaks")
        .expect("read");
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "an HTTP/2 (gRPC) client preface");
}

/// A Prometheus server (Debian's package; `scripts/deps-debian` installs it) with
/// `deploy/prometheus/prometheus.yml` and `alerts.yml` as they are, but for two things a
/// test must change: the greeter's target is 127.0.0.1 instead of its compose name, and
/// scrapes and rule evaluations run every second. Requests are dead-lettered; the
/// `CourierDeadLetters` alert must fire, seen through Prometheus's own HTTP API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_alert_fires_in_a_real_prometheus() {
    let mut drill = RabbitDrill::new("alert").await;
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _worker = greeter(&drill, "alert", false, &["--http-addr", &metrics_addr]);
    let prometheus = Prometheus::start(metrics_port);

    let started = std::time::Instant::now();
    let firing = loop {
        // An empty message: a permanent failure, dead-lettered at once.
        let mut refused = request(&format!("alert-{}", started.elapsed().as_millis()), &replies);
        refused.payload = r#"{"message":""}"#.into();
        drill.publish(&queue, vec![refused]).await;
        let (status, body) = get(prometheus.port, "/api/v1/alerts").await;
        let alerts: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = alerts["data"]["alerts"].as_array().into_iter().flatten().find(|alert| {
            alert["labels"]["alertname"] == "CourierDeadLetters"
                && alert["labels"]["job"] == "greeter-rabbitmq"
                && alert["state"] == "firing"
        });
        if let Some(alert) = found {
            break alert.clone();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no firing CourierDeadLetters alert within 60 s (HTTP {status}): {body}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    println!("fired after {:?}: {firing}", started.elapsed());
    assert_eq!(firing["labels"]["kind"], "permanent");
    assert_eq!(firing["labels"]["severity"], "warning");
    let summary = firing["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("permanent dead letters in 10 min"), "{summary}");
}

/// A Prometheus process on a free port with the project's configuration; stopped when dropped.
struct Prometheus {
    port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Prometheus {
    fn start(greeter_metrics_port: u16) -> Self {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("courier-prometheus-{port}"));
        std::fs::create_dir_all(&dir).expect("a folder for Prometheus");
        let mut config = std::fs::read_to_string(format!("{deploy}/prometheus.yml")).expect("prometheus.yml");
        for (from, to) in [
            ("scrape_interval: 5s", "scrape_interval: 1s".to_owned()),
            ("evaluation_interval: 15s", "evaluation_interval: 1s".to_owned()),
            ("\"greeter-rabbitmq:9464\"", format!("\"127.0.0.1:{greeter_metrics_port}\"")),
        ] {
            assert!(config.contains(from), "deploy/prometheus/prometheus.yml no longer has {from}: update this test");
            config = config.replace(from, &to);
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
        std::fs::copy(format!("{deploy}/alerts.yml"), dir.join("alerts.yml")).expect("copy the alert rules");
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("Prometheus is not installed: run scripts/deps-debian (scripts/test does)");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self { port, dir, child }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
