//! The broker force-closes every connection mid-load (`rabbitmqctl close_all_connections`):
//! the greeter recovers by itself and loses nothing; with a random mix of good and poison
//! requests and a kill -9 too, each request still reaches its one outcome. Its own test
//! binary, because closing every connection would disturb tests running beside it.

use courier_tests::{
    mix::{self, Outcomes},
    rabbitmq::{PATIENCE, RawClient, cleanup, greeter, names},
    replies::Replies,
};

/// The tests of this binary cut every connection of the broker: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn close_all_connections() {
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_all_connections", "courier test: forced disconnect"])
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl close_all_connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_connections_mid_load_loses_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
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

    close_all_connections();

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

/// Read replies and dead letters into `outcomes` until `target` requests have their whole
/// outcome, or a minute passes.
async fn gather(
    client: &RawClient,
    queues: [&str; 2],
    requests: &[mix::Request],
    outcomes: &mut Outcomes,
    target: usize,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for message in client.take(queues[0]).await {
            outcomes.reply(&message);
        }
        for message in client.take(queues[1]).await {
            outcomes.dead_letter(&message);
        }
        let finished = requests.iter().filter(|r| outcomes.finished(r)).count();
        if finished >= target || std::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A random mix of good and poison requests (`COURIER_TEST_SEED` repeats one), a worker
/// killed with -9 a third of the way, and every connection cut by the broker at two
/// thirds: afterwards each request has exactly its outcome (an ok reply, or a dead letter
/// of its kind and an error reply), none lost, none wrong; duplicates are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_mix_through_kill_9_and_a_connection_cut_gives_each_request_its_outcome() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let _alone = ONE_AT_A_TIME.lock().await;
    let seed = mix::seed();
    let (queue, replies) = names("mix");
    let dlq = format!("{queue}.dlq");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let requests = mix::requests(seed, 1_200);
    for request in &requests {
        let mut table = FieldTable::default();
        for (name, value) in &request.headers {
            table.insert((*name).into(), AMQPValue::LongString(LongString::from(value.as_bytes())));
        }
        let properties = lapin::BasicProperties::default()
            .with_correlation_id(request.id.as_str().into())
            .with_reply_to(replies.as_str().into())
            .with_headers(table);
        client.publish(&queue, &request.payload, properties).await;
    }
    // Slow enough (8 at a time, 40 ms each) that the kill and the cut land mid-load.
    let slow = |label: &str| {
        let url = courier_tests::rabbitmq::url();
        // One retry tier, the one `cleanup` removes.
        let args = [
            "--broker",
            &url,
            "--queue",
            &queue,
            "--replies",
            &replies,
            "--instance",
            label,
            "--concurrency",
            "8",
            "--retry-delays",
            "1s",
        ];
        let mut worker =
            courier_tests::process::Process::start("greeter", label, &args, &[("GREETER_LATENCY_MS", "40")]);
        worker.wait_for_log("Consuming.", PATIENCE);
        worker
    };
    let mut first = slow("mix-a");
    let mut outcomes = Outcomes::default();
    gather(&client, [&replies, &dlq], &requests, &mut outcomes, requests.len() / 3).await;
    first.kill9();
    let at_kill = requests.iter().filter(|r| outcomes.finished(r)).count();
    let mut second = slow("mix-b");
    gather(&client, [&replies, &dlq], &requests, &mut outcomes, requests.len() * 2 / 3).await;
    let at_cut = requests.iter().filter(|r| outcomes.finished(r)).count();
    drop(client);
    close_all_connections();
    let client = RawClient::connect().await;
    gather(&client, [&replies, &dlq], &requests, &mut outcomes, requests.len()).await;
    let verdict = outcomes.check(&requests);
    println!(
        "random mix (seed {seed}): {} requests ({at_kill} finished at the kill, {at_cut} at the cut), {} lost, {} wrong, {} duplicate replies",
        requests.len(),
        verdict.lost.len(),
        verdict.wrong.len(),
        verdict.duplicates
    );
    assert!(verdict.wrong.is_empty(), "seed {seed}: {:?}", &verdict.wrong[..verdict.wrong.len().min(5)]);
    assert!(
        verdict.lost.is_empty(),
        "seed {seed}: lost {:?}\n{}",
        &verdict.lost[..verdict.lost.len().min(5)],
        second.tail()
    );
    assert!(second.terminate());
    cleanup(&queue, &replies).await;
}
