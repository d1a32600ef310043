//! The broker force-closes every connection mid-load (`rabbitmqctl close_all_connections`):
//! the greeter recovers by itself and loses nothing; with a random mix of good and poison
//! requests and a kill -9 too, each request still reaches its one outcome; the ledger with
//! the idempotent inbox records each payment once through both. Its own test binary,
//! because closing every connection would disturb tests running beside it.

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

/// The ledger with the idempotent inbox (`--inbox`, PostgreSQL): 1,000 payments through a
/// kill -9 and a cut of every broker connection. Every payment is answered, and recorded
/// exactly once in the ledger table — its row is written in the inbox's transaction, so a
/// redelivery finds the request answered and replies from the inbox. Duplicate replies
/// are allowed (a reply published but not acked before the crash); duplicate rows are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_records_each_payment_once_through_a_crash_and_a_disconnect() {
    ledger_through_a_crash_and_a_disconnect("ledger", &[]).await;
}

/// The same in batches of up to 50 (`--batch-size 50`): a batch's payments are claimed,
/// written and committed in one transaction, and the batches the crash and the cut broke
/// off are redone without a row twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_ledger_records_each_payment_once_through_a_crash_and_a_disconnect() {
    ledger_through_a_crash_and_a_disconnect("ledger-batch", &["--batch-size", "50", "--batch-wait", "20ms"]).await;
}

/// 1,000 payments to the ledger (`extra` flags) through a kill -9 and a disconnect.
async fn ledger_through_a_crash_and_a_disconnect(test: &str, extra: &[&str]) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (queue, replies) = names(test);
    let run = queue.trim_end_matches(".requests").to_owned();
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let ids: Vec<String> = (0..1_000).map(|i| format!("{run}-payment-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let payment =
            serde_json::json!({ "payment": id, "account": format!("{run}-account-{}", i % 10), "amount_cents": 100 });
        let properties = lapin::BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_reply_to(replies.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        client.publish(&queue, payment.to_string().as_bytes(), properties).await;
    }

    let mut first = ledger(&format!("{test}-a"), &queue, &replies, extra);
    let mut seen = Replies::default();
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 300).await;
    assert!(seen.by_id.len() >= 300, "progress before the crash:\n{}", first.tail());
    first.kill9();
    let mut second = ledger(&format!("{test}-b"), &queue, &replies, extra);
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 600).await;
    drop(client);
    close_all_connections();
    let client = RawClient::connect().await;
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |_| false).await;

    let database = courier_tests::postgres::connect().await;
    let rows = database
        .query(
            "SELECT payment, COUNT(*) FROM ledger_entries WHERE account LIKE $1 || '-account-%' GROUP BY payment",
            &[&run],
        )
        .await
        .expect("count the ledger's rows");
    let recorded: std::collections::HashMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let twice: Vec<_> = recorded.iter().filter(|(_, n)| **n > 1).collect();
    let missing = seen.missing(&ids);
    println!(
        "{test}: {} answered ({} ok), {} duplicate replies, {} payments recorded, {} recorded more than once",
        seen.by_id.len(),
        seen.by_status.get("ok").copied().unwrap_or_default(),
        seen.duplicates(),
        recorded.len(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "{} payments unanswered, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(3)],
        second.tail()
    );
    assert_eq!(seen.by_status.get("ok").copied().unwrap_or_default(), seen.by_id.len() + seen.duplicates(), "all ok");
    assert!(twice.is_empty(), "recorded more than once: {twice:?}");
    assert_eq!(recorded.len(), ids.len(), "every payment recorded");
    assert!(second.running(), "the worker recovered from the disconnect by itself:\n{}", second.tail());
    assert!(second.terminate());
    cleanup(&queue, &replies).await;
}

/// The ledger binary with the inbox, on the test broker.
fn ledger(label: &str, queue: &str, replies: &str, extra: &[&str]) -> courier_tests::process::Process {
    let (url, inbox) = (courier_tests::rabbitmq::url(), courier_tests::postgres::url());
    let mut args =
        vec!["--broker", &url, "--queue", queue, "--replies", replies, "--instance", label, "--inbox", &inbox];
    args.extend_from_slice(extra);
    let mut process = courier_tests::process::Process::start("ledger", label, &args, &[]);
    process.wait_for_log("Consuming.", PATIENCE);
    process
}
