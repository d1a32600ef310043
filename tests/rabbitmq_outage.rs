//! RabbitMQ goes away (`rabbitmqctl stop_app`) and comes back: the greeter's `/readyz`
//! drops to 503 and returns to 200 by itself, and it answers again. Its own test binary,
//! because stopping the broker would break tests running beside it.

use std::time::Duration;

use courier_tests::{
    http::{free_port, wait_for_status},
    rabbitmq::{PATIENCE, RawClient, cleanup, greeter, names},
    replies::Replies,
};

/// Starts the broker's application again even when the test fails half-way.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = rabbitmqctl("start_app");
    }
}

fn rabbitmqctl(command: &str) -> bool {
    std::process::Command::new("rabbitmqctl").args(["-q", command]).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker() {
    let (queue, replies) = names("outage");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = greeter("outage", &queue, &replies, &["--http-addr", &addr]);
    wait_for_status(port, "/readyz", 200, PATIENCE).await;

    let restart = Restart;
    assert!(rabbitmqctl("stop_app"), "rabbitmqctl stop_app");
    wait_for_status(port, "/readyz", 503, PATIENCE).await;
    assert_eq!(courier_tests::http::get(port, "/healthz").await.0, 200, "alive while not ready");
    assert!(rabbitmqctl("start_app"), "rabbitmqctl start_app");
    drop(restart);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60)).await;

    let client = RawClient::connect().await;
    client.declare(&replies).await;
    let ids = client.publish_greetings(&queue, &replies, "o", 10).await;
    let mut seen = Replies::default();
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    assert!(seen.missing(&ids).is_empty(), "answers after the outage:\n{}", worker.tail());
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}
