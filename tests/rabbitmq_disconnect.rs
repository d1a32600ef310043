//! The broker force-closes every connection mid-load (`rabbitmqctl close_all_connections`):
//! the greeter recovers by itself and loses nothing. Its own test binary, because closing
//! every connection would disturb tests running beside it.

use courier_tests::{
    rabbitmq::{PATIENCE, RawClient, cleanup, greeter, names},
    replies::Replies,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_connections_mid_load_loses_nothing() {
    let (queue, replies) = names("forced");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let ids = client.publish_greetings(&queue, &replies, "f", 5_000).await;
    let mut worker = greeter("forced-a", &queue, &replies, &[]);
    let mut seen = Replies::default();
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 1_000).await;
    assert!(seen.by_id.len() >= 1_000, "progress before the disconnect:\n{}", worker.tail());
    drop(client);

    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_all_connections", "courier test: forced disconnect"])
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl close_all_connections");

    let client = RawClient::connect().await;
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let missing = seen.missing(&ids);
    println!(
        "forced disconnect: {} answered, {} lost, {} duplicates",
        seen.by_id.len(),
        missing.len(),
        seen.duplicates()
    );
    assert!(missing.is_empty(), "lost {} requests\n{}", missing.len(), worker.tail());
    assert!(worker.running(), "the worker recovered by itself instead of exiting:\n{}", worker.tail());
    // The whole log, not its tail: warnings about the deliveries of the lost channel can
    // push the resubscription out of the last lines.
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    let after = log.rsplit_once("Consumer interrupted").map(|(_, rest)| rest).unwrap_or_default();
    assert!(after.contains("Consuming."), "it resubscribed after the disconnect:\n{}", worker.tail());
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}
