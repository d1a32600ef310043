//! What operators see of a greeter on RabbitMQ: `/metrics` counters move as requests are
//! answered, retried and dead-lettered, and the request's trace id comes back in the
//! reply, the retry and the dead-letter record; a real Prometheus and Alertmanager with the
//! project's own configuration and alert rules fire the dead-letter alert on one dead letter.

use courier::contract::{
    failure::{FailureKind, fingerprint},
    headers as h, trace,
};
use courier_tests::{
    alerting::{Server, alerts, notification},
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

/// A Prometheus server and an Alertmanager (Debian's packages; `scripts/deps-debian`
/// installs them) with `deploy/prometheus` and `deploy/alertmanager` as they are, but for
/// what a test must change: targets on 127.0.0.1 instead of compose names, scrapes and
/// rule evaluations every second, and a webhook on the Alertmanager's receiver. One
/// request is dead-lettered: `CourierDeadLetters` must fire in Prometheus, reach the
/// Alertmanager and be posted to the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_dead_letter_fires_the_alert_through_alertmanager() {
    let mut drill = RabbitDrill::new("alert").await;
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _worker = greeter(&drill, "alert", false, &["--http-addr", &metrics_addr]);
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook");
    let alertmanager = Server::alertmanager(&format!("http://{}/", webhook.local_addr().expect("address")));
    let prometheus = Server::prometheus(metrics_port, alertmanager.port);
    // Prometheus has scraped the worker once before the dead letter, as it would have in
    // production (a series first seen at 1 must count).
    let up = "/api/v1/query?query=up%7Bjob%3D%22greeter-rabbitmq%22%7D";
    let scraped = async {
        while !get(prometheus.port, up).await.1.contains(r#""value":["#) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let patience = std::time::Duration::from_secs(60);
    tokio::time::timeout(patience, scraped).await.unwrap_or_else(|_| panic!("never scraped\n{}", prometheus.log()));

    // One empty message: a permanent failure, dead-lettered at once.
    let mut refused = request("alert-once", &replies);
    refused.payload = r#"{"message":""}"#.into();
    drill.publish(&queue, vec![refused]).await;
    let started = std::time::Instant::now();
    collect(&mut drill, &format!("{queue}.dlq"), |all| !all.is_empty()).await;

    let firing = |port: u16, path: &'static str| async move {
        loop {
            let found = alerts(port, path).await.into_iter().find(|alert| {
                alert["labels"]["alertname"] == "CourierDeadLetters" && alert["labels"]["job"] == "greeter-rabbitmq"
            });
            if let Some(alert) = found {
                return alert;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let in_prometheus = tokio::time::timeout(patience, firing(prometheus.port, "/api/v1/alerts?state=firing"))
        .await
        .unwrap_or_else(|_| panic!("no firing CourierDeadLetters in Prometheus\n{}", prometheus.log()));
    let fired = started.elapsed();
    let in_alertmanager = tokio::time::timeout(patience, firing(alertmanager.port, "/api/v2/alerts"))
        .await
        .unwrap_or_else(|_| panic!("the alert never reached the Alertmanager\n{}", alertmanager.log()));
    let received = started.elapsed();
    let notified = tokio::time::timeout(patience, notification(&webhook, "CourierDeadLetters"))
        .await
        .unwrap_or_else(|_| panic!("the Alertmanager never posted the alert\n{}", alertmanager.log()));
    println!(
        "one dead letter: firing in Prometheus after {fired:?}, in the Alertmanager after {received:?}, \
         notified after {:?} (the route's group_wait)",
        started.elapsed()
    );
    for alert in [&in_prometheus, &in_alertmanager] {
        assert_eq!(alert["labels"]["kind"], "permanent", "{alert}");
        assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
        let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
        assert_eq!(summary, "greeter-rabbitmq: 1 permanent dead letters in 10 min", "{alert}");
    }
    assert_eq!(notified["status"], "firing", "{notified}");
    assert_eq!(notified["receiver"], "developer", "{notified}");
}
