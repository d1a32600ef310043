//! The ledger with its inbox (`--inbox`, PostgreSQL) against hostile requests and a
//! database that is slow or limited: a reused message id never hands one requester
//! another's reply; ids and values the database cannot store are the request's fault,
//! not an outage (no breaker); a locked table ends each call within the inbox's bound;
//! a role with a connection limit above the pool is no outage.

use std::time::{Duration, Instant};

use courier::{contract::headers as h, transport::Message};
use courier_tests::{
    process::Process,
    rabbitmq::{PATIENCE, RawClient, cleanup, names},
};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};

/// A ledger on `queue` with the inbox at `inbox` and these flags.
fn ledger(label: &str, queue: &str, replies: &str, inbox: &str, extra: &[&str]) -> Process {
    let url = courier_tests::rabbitmq::url();
    let args = ["--broker", &url, "--queue", queue, "--replies", replies, "--instance", label, "--inbox", inbox];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let mut process = Process::start("ledger", label, &args, &[]);
    process.wait_for_log("Consuming.", PATIENCE);
    process
}

/// A payment request with this message id, correlation id and reply queue.
fn payment(id: &str, correlation: &str, reply_to: &str, body: &serde_json::Value) -> (Vec<u8>, BasicProperties) {
    let properties = BasicProperties::default()
        .with_message_id(id.into())
        .with_correlation_id(correlation.into())
        .with_reply_to(reply_to.into())
        .with_content_type("application/json".into());
    (body.to_string().into_bytes(), properties)
}

/// The next message of `queue` within `patience` (taken and acked).
async fn next(client: &RawClient, queue: &str, patience: Duration) -> Option<Message> {
    let deadline = Instant::now() + patience;
    loop {
        let got = client.channel.basic_get(queue.into(), Default::default()).await.expect("basic.get");
        if let Some(got) = got {
            got.delivery.ack(Default::default()).await.expect("ack");
            let headers = courier::transport::amqp::headers(&got.delivery.properties);
            return Some(Message { payload: got.delivery.data.into(), headers, key: None });
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'m>(message: &'m Message, name: &str) -> &'m str {
    message.headers.get(name).map_or("", String::as_str)
}

/// Alice pays with id X; Mallory sends another payment under X with his own reply queue.
/// He gets `permanent/duplicate_message_id` (and a dead letter), never Alice's reply; his
/// payment is not booked. Alice sending hers again, with a new correlation id, is answered
/// from the inbox as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_message_id_never_hands_out_anothers_reply() {
    let (queue, alice) = names("reuse");
    // Another requester's queue the default allowlist (`*.replies`) takes.
    let mallory = alice.replace(".replies", "-mallory.replies");
    let client = RawClient::connect().await;
    for name in [&queue, &alice, &mallory] {
        client.declare(name).await;
    }
    let inbox = courier_tests::postgres::url();
    let mut worker = ledger("reuse", &queue, &alice, &inbox, &["--retry-delays="]);
    let run = queue.trim_end_matches(".requests");
    let id = format!("{run}-pay-1");
    let account = format!("{run}-alice");
    let p1 = serde_json::json!({ "payment": format!("{run}-p1"), "account": account, "amount_cents": 5000 });
    let p2 =
        serde_json::json!({ "payment": format!("{run}-p2"), "account": format!("{run}-mallory"), "amount_cents": 1 });

    let (body, properties) = payment(&id, "alice-1", &alice, &p1);
    client.publish(&queue, &body, properties).await;
    let first = next(&client, &alice, PATIENCE).await.expect("Alice is answered");
    assert_eq!(header(&first, h::STATUS), "ok", "{first:?}\n{}", worker.tail());

    let (body, properties) = payment(&id, "mallory-1", &mallory, &p2);
    client.publish(&queue, &body, properties).await;
    let answer = next(&client, &mallory, PATIENCE).await.expect("Mallory gets an answer");
    println!("reused id: Mallory got status {} code {}", header(&answer, h::STATUS), header(&answer, h::ERROR_CODE));
    assert_eq!(
        header(&answer, h::STATUS),
        "error",
        "not Alice's reply: {:?}",
        String::from_utf8_lossy(&answer.payload)
    );
    assert_eq!(header(&answer, h::ERROR_CODE), "duplicate_message_id");
    assert!(!String::from_utf8_lossy(&answer.payload).contains("balance"), "nothing of Alice's reply");
    let dead = next(&client, &format!("{queue}.dlq"), PATIENCE).await.expect("Mallory's request is dead-lettered");
    assert_eq!(header(&dead, h::FAILURE_KIND), "permanent");
    assert_eq!(header(&dead, h::FAILURE_CODE), "duplicate_message_id");
    assert_eq!(dead.payload, body, "his payload, byte for byte");

    let (body, properties) = payment(&id, "alice-2", &alice, &p1);
    client.publish(&queue, &body, properties).await;
    let again = next(&client, &alice, PATIENCE).await.expect("Alice's redelivery is answered");
    assert_eq!(header(&again, h::STATUS), "ok");
    assert_eq!(header(&again, h::CORRELATION_ID), "alice-2");
    assert_eq!(again.payload, first.payload, "from the inbox: the same reply");

    let database = courier_tests::postgres::connect().await;
    let booked: i64 = database
        .query_one("SELECT COUNT(*) FROM ledger_entries WHERE account LIKE $1 || '-%'", &[&run])
        .await
        .expect("count")
        .get(0);
    assert_eq!(booked, 1, "Alice's payment once, Mallory's not at all");
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &alice).await;
}

/// Message ids the inbox cannot store (a NUL, longer than it keeps) and a payment whose
/// value the table refuses end at once as the request's fault — `decode/bad_header`,
/// `permanent` — without retries and without opening the inbox's breaker: a good
/// request behind them is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_database_refuses_do_not_open_the_breaker() {
    let (queue, replies) = names("refused");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let inbox = courier_tests::postgres::url();
    let flags = ["--retry-delays", "1s,2s", "--breaker-failures", "2", "--retry-attempts", "2"];
    let mut worker = ledger("refused", &queue, &replies, &inbox, &flags);
    let run = queue.trim_end_matches(".requests");
    let body = |n: usize, payment: String| {
        serde_json::json!({ "payment": payment, "account": format!("{run}-{n}"), "amount_cents": 1 }).to_string()
    };
    let started = Instant::now();
    let long = "x".repeat(courier::MAX_MESSAGE_ID_BYTES + 1);
    for n in 0..6 {
        // The id as a header: an AMQP message-id property is a short string.
        let id = if n == 5 { long.clone() } else { format!("{run}-\0-{n}") };
        let mut headers = FieldTable::default();
        headers.insert(h::MESSAGE_ID.into(), AMQPValue::LongString(LongString::from(id.as_bytes())));
        let properties = BasicProperties::default()
            .with_correlation_id(format!("bad-id-{n}").as_str().into())
            .with_reply_to(replies.as_str().into())
            .with_headers(headers);
        client.publish(&queue, body(n, format!("{run}-bad-{n}")).as_bytes(), properties).await;
    }
    for n in 0..3 {
        // A value PostgreSQL's text refuses (SQLSTATE 22021), under a good id.
        let (payload, properties) = payment(
            &format!("{run}-nul-{n}"),
            &format!("nul-{n}"),
            &replies,
            &serde_json::json!({
                "payment": format!("{run}-\u{0}-{n}"), "account": format!("{run}-nul"), "amount_cents": 1
            }),
        );
        client.publish(&queue, &payload, properties).await;
    }
    let good =
        serde_json::json!({ "payment": format!("{run}-good"), "account": format!("{run}-good"), "amount_cents": 7 });
    let (payload, properties) = payment(&format!("{run}-good"), "good", &replies, &good);
    client.publish(&queue, &payload, properties).await;

    let mut codes = Vec::new();
    let mut good_after = None;
    while codes.len() < 9 || good_after.is_none() {
        let reply = next(&client, &replies, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("every request answered:\n{}", worker.tail()));
        match header(&reply, h::CORRELATION_ID) {
            "good" => good_after = Some(started.elapsed()),
            _ => codes.push(header(&reply, h::ERROR_CODE).to_owned()),
        }
    }
    let good_after = good_after.expect("the good request answered");
    println!("refused by the database: codes {codes:?}; the good request answered after {good_after:.2?}");
    assert_eq!(codes.iter().filter(|c| *c == "bad_header").count(), 6, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "refused_by_database").count(), 3, "{codes:?}");
    assert!(good_after < Duration::from_secs(5), "not held behind retries or an open breaker: {good_after:?}");
    assert!(!worker.tail().contains("Circuit breaker open"), "no breaker opened:\n{}", worker.tail());
    let dlq = format!("{queue}.dlq");
    let mut dead = Vec::new();
    while let Some(record) = next(&client, &dlq, Duration::from_secs(1)).await {
        dead.push(header(&record, h::FAILURE_KIND).to_owned());
    }
    assert_eq!(dead.len(), 9, "each refused request dead-lettered once: {dead:?}");
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &replies).await;
}

/// A table locked by another session: the handler's statement waits on the lock. Each
/// inbox call ends within `--inbox-timeout`, so the request reaches its outcome (here,
/// without retry tiers: a dead letter, `inbox_unavailable`) while the lock is still
/// held — not when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_ends_each_call_within_the_inbox_bound() {
    let (queue, replies) = names("locked");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let inbox = courier_tests::postgres::url();
    let flags = ["--retry-delays=", "--retry-attempts", "2", "--handler-timeout", "1s", "--inbox-timeout", "1s"];
    let mut worker = ledger("locked", &queue, &replies, &inbox, &flags);
    let run = queue.trim_end_matches(".requests");
    let mut locker = courier_tests::postgres::connect().await;
    let lock = locker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE ledger_entries IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let body = serde_json::json!({ "payment": format!("{run}-p"), "account": format!("{run}-a"), "amount_cents": 1 });
    let (payload, properties) = payment(&format!("{run}-p"), "locked", &replies, &body);
    let sent = Instant::now();
    client.publish(&queue, &payload, properties).await;
    let dead = next(&client, &format!("{queue}.dlq"), Duration::from_secs(12)).await;
    let took = sent.elapsed();
    println!(
        "locked table: outcome after {took:.2?} ({:?}) while the lock was held",
        dead.as_ref().map(|d| header(d, h::FAILURE_CODE))
    );
    let dead = dead.unwrap_or_else(|| panic!("an outcome while the lock is held:\n{}", worker.tail()));
    assert_eq!(header(&dead, h::FAILURE_KIND), "transient");
    assert!(took < Duration::from_secs(10), "{took:?}");
    lock.rollback().await.expect("unlock");
    // The worker goes on once the lock is gone.
    let body = serde_json::json!({ "payment": format!("{run}-q"), "account": format!("{run}-a"), "amount_cents": 1 });
    let (payload, properties) = payment(&format!("{run}-q"), "after", &replies, &body);
    client.publish(&queue, &payload, properties).await;
    let mut answered = false;
    while let Some(reply) = next(&client, &replies, PATIENCE).await {
        if header(&reply, h::CORRELATION_ID) == "after" {
            assert_eq!(header(&reply, h::STATUS), "ok", "{}", worker.tail());
            answered = true;
            break;
        }
    }
    assert!(answered, "answered after the lock:\n{}", worker.tail());
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &replies).await;
}

/// A database role limited to 3 connections and an inbox of 2: 40 payments at
/// `--concurrency 16` all answered ok, none retried or dead-lettered (an unbounded pool
/// opened a connection per request and read the role's limit as an outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_a_connection_limit_is_no_outage() {
    let (queue, replies) = names("pool");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let inbox = courier_tests::postgres::limited_database(3).await;
    let flags = ["--inbox-connections", "2", "--concurrency", "16", "--retry-delays="];
    let mut worker = ledger("pool", &queue, &replies, &inbox, &flags);
    let run = queue.trim_end_matches(".requests");
    for n in 0..40 {
        let body =
            serde_json::json!({ "payment": format!("{run}-{n}"), "account": format!("{run}-a"), "amount_cents": 1 });
        let (payload, properties) = payment(&format!("{run}-{n}"), &format!("{n}"), &replies, &body);
        client.publish(&queue, &payload, properties).await;
    }
    let mut ok = 0;
    while ok < 40 {
        let reply = next(&client, &replies, PATIENCE).await.unwrap_or_else(|| panic!("answered:\n{}", worker.tail()));
        assert_eq!(header(&reply, h::STATUS), "ok", "{}: {}", header(&reply, h::ERROR_CODE), worker.tail());
        ok += 1;
    }
    println!("role limited to 3 connections, inbox of 2, concurrency 16: {ok} of 40 answered ok");
    assert!(next(&client, &format!("{queue}.dlq"), Duration::from_millis(500)).await.is_none(), "none dead-lettered");
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &replies).await;
}
