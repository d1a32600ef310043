//! The contract suite on the in-memory transport, under paused tokio time; codecs and the
//! inbox (with a real PostgreSQL) on the same broker.

use courier::testing::MemoryHarness;

courier::contract_suite!(
    #[tokio::test(start_paused = true)]
    MemoryHarness::default()
);

/// A worker without a protobuf codec answers a protobuf request with a `decode` dead
/// letter (`unsupported_content_type`) and an error reply the requester can read, in the
/// protobuf envelope; it never runs the handler.
#[tokio::test(start_paused = true)]
async fn a_json_only_worker_refuses_protobuf_requests() {
    use std::time::Duration;

    use courier::{
        Context, Handler, HandlerError, MemoryBroker, Message, Settings, Transport,
        contract::{codec::Codec, error_reply::ErrorReply, headers as h},
    };

    #[derive(Clone, Debug)]
    struct JsonOnly(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl Handler for JsonOnly {
        type Request = serde_json::Value;
        type Reply = serde_json::Value;
        const NAME: &'static str = "json-only";
        const REQUEST_SCHEMA: &'static str = "{}";
        async fn handle(&self, request: Self::Request, _: &Context) -> Result<Self::Reply, HandlerError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(request)
        }
    }

    let broker = MemoryBroker::new();
    let settings = Settings::defaults(JsonOnly::NAME);
    broker.declare(&settings.topology()).await.expect("declare");
    let calls = JsonOnly(Default::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let worker =
        tokio::spawn(courier::run(settings.clone(), broker.clone(), calls.clone(), stop.clone().cancelled_owned()));
    let headers = [(h::CORRELATION_ID, "c-1"), (h::CONTENT_TYPE, h::PROTOBUF)];
    let request = Message {
        payload: b"\x0a\x03Ada".to_vec().into(),
        headers: headers.into_iter().map(|(k, v)| (k.into(), v.to_owned())).collect(),
        key: None,
    };
    broker.publish(&settings.queue, &request).await.expect("publish");
    let dead_letters = courier::contract::naming::dead_letter(&settings.queue);
    let record = broker.receive(&dead_letters, Duration::from_secs(5)).await.expect("a dead letter");
    assert_eq!(record.headers.get(h::FAILURE_CODE).map(String::as_str), Some("unsupported_content_type"));
    assert_eq!(record.payload, request.payload, "kept byte for byte");
    let reply = broker.receive(&settings.replies, Duration::from_secs(5)).await.expect("an error reply");
    assert_eq!(reply.headers.get(h::CORRELATION_ID).map(String::as_str), Some("c-1"));
    let envelope = ErrorReply::decode(Codec::Protobuf, &reply.payload).expect("the protobuf envelope");
    assert_eq!(envelope.error.code, "unsupported_content_type");
    assert_eq!(calls.0.load(std::sync::atomic::Ordering::Relaxed), 0, "the handler never ran");
    stop.cancel();
    worker.await.expect("worker task").expect("worker ends cleanly");
}

/// With the inbox (a real PostgreSQL, `COURIER_TEST_POSTGRES_URL` or the local one), what
/// a failed handler call wrote is rolled back before the next call, and a request sent
/// again with the same message id is answered from the inbox without the handler: one
/// row, two identical replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_keeps_only_the_writes_of_the_call_that_passed() {
    inbox_keeps_only_the_writes_of_the_call_that_passed(None).await;
}

/// The same with `--batch-size`: a plain handler's requests of one batch run one after
/// the other in the batch's transaction, each from a savepoint its failure rolls back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_batches_the_inbox_keeps_only_the_writes_of_the_call_that_passed() {
    let batch = courier::BatchSettings { size: 4, wait: std::time::Duration::from_millis(50) };
    inbox_keeps_only_the_writes_of_the_call_that_passed(Some(batch)).await;
}

async fn inbox_keeps_only_the_writes_of_the_call_that_passed(batch: Option<courier::BatchSettings>) {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use courier::{Context, Handler, HandlerError, MemoryBroker, Message, Settings, Transport, contract::headers as h};

    /// Writes a row, then fails transiently on its first call.
    #[derive(Clone, Debug, Default)]
    struct FailsOnce(Arc<AtomicU32>);
    impl Handler for FailsOnce {
        type Request = serde_json::Value;
        type Reply = serde_json::Value;
        const NAME: &'static str = "inbox-fails-once";
        const REQUEST_SCHEMA: &'static str = "{}";
        const INBOX_SCHEMA: &'static str =
            "CREATE TABLE IF NOT EXISTS inbox_test_writes (id text NOT NULL, call int NOT NULL);";
        async fn handle(&self, request: Self::Request, context: &Context) -> Result<Self::Reply, HandlerError> {
            let call = self.0.fetch_add(1, Ordering::Relaxed) + 1;
            let id = request["id"].as_str().unwrap_or_default().to_owned();
            let inbox = context.inbox.as_ref().expect("the request's transaction");
            let written = inbox
                .execute("INSERT INTO inbox_test_writes (id, call) VALUES ($1, $2)", &[&id, &(call as i32)])
                .await
                .map_err(|e| HandlerError::permanent("db", e))?;
            assert_eq!(written, 1);
            if call == 1 {
                return Err(HandlerError::transient("first_call_fails", "as scripted"));
            }
            Ok(serde_json::json!({ "call": call }))
        }
    }

    let url = courier_tests::postgres::url();
    let broker = MemoryBroker::new();
    let mut settings = Settings::defaults(FailsOnce::NAME);
    settings.batch = batch;
    settings.inbox = Some(courier::InboxSettings {
        url: url.clone(),
        retention: Duration::from_secs(60),
        bounds: courier::InboxBounds { timeout: Duration::from_secs(5), connections: 16 },
    });
    broker.declare(&settings.topology()).await.expect("declare");
    let handler = FailsOnce::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker =
        tokio::spawn(courier::run(settings.clone(), broker.clone(), handler.clone(), stop.clone().cancelled_owned()));
    let id = uuid::Uuid::new_v4().to_string();
    let request = |id: &str| {
        let headers = [(h::MESSAGE_ID, id), (h::CORRELATION_ID, id)];
        Message {
            payload: serde_json::json!({ "id": id }).to_string().into(),
            headers: headers.into_iter().map(|(k, v)| (k.into(), v.to_owned())).collect(),
            key: None,
        }
    };
    let database = courier_tests::postgres::connect().await;
    if batch.is_some() {
        // Two requests in one batch: the first call fails, the second passes, and the
        // batch commits; the failed one's write is not in it, its retry writes once.
        let other = uuid::Uuid::new_v4().to_string();
        for id in [&id, &other] {
            broker.publish(&settings.queue, &request(id)).await.expect("publish");
        }
        for _ in 0..2 {
            let reply = broker.receive(&settings.replies, Duration::from_secs(10)).await.expect("a reply");
            assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"));
        }
        assert_eq!(handler.0.load(Ordering::Relaxed), 3, "one failed call, two that passed");
        for id in [&id, &other] {
            let rows = database.query("SELECT call FROM inbox_test_writes WHERE id = $1", &[id]).await.expect("query");
            assert_eq!(rows.len(), 1, "{id}: one write, from the call that passed");
        }
        stop.cancel();
        return worker.await.expect("worker task").expect("worker ends cleanly");
    }
    for _ in 0..2 {
        let headers = [(h::MESSAGE_ID, id.as_str()), (h::CORRELATION_ID, id.as_str())];
        let request = Message {
            payload: serde_json::json!({ "id": id }).to_string().into(),
            headers: headers.into_iter().map(|(k, v)| (k.into(), v.to_owned())).collect(),
            key: None,
        };
        broker.publish(&settings.queue, &request).await.expect("publish");
        let reply = broker.receive(&settings.replies, Duration::from_secs(10)).await.expect("a reply");
        assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"));
        assert_eq!(reply.payload, br#"{"call":2}"#[..], "the same reply both times");
    }
    assert_eq!(handler.0.load(Ordering::Relaxed), 2, "two calls for the first delivery, none for the second");
    let rows = database.query("SELECT call FROM inbox_test_writes WHERE id = $1", &[&id]).await.expect("query");
    let calls: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(calls, [2], "the failed call's write was rolled back");
    stop.cancel();
    worker.await.expect("worker task").expect("worker ends cleanly");
}

/// A batch with the inbox (a real PostgreSQL): its requests are claimed, handled and
/// committed in one transaction (their rows and inbox rows share one `xmin`); a request
/// that fails is released and written by nobody, and its retry claims anew; one sent
/// again is answered from the inbox and never enters a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_claimed_handled_and_committed_in_one_transaction() {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use courier::{
        BatchHandler, BatchResult, BatchSettings, Context, HandlerError, MemoryBroker, Message, Settings, Transport,
        contract::headers as h,
    };

    /// Writes the batch's `ok` and `flaky` requests in one insert; `fail` fails for good,
    /// `flaky` transiently on its first call.
    #[derive(Clone, Debug, Default)]
    struct Rows(Arc<Mutex<Vec<usize>>>);
    impl BatchHandler for Rows {
        type Request = serde_json::Value;
        type Reply = serde_json::Value;
        const NAME: &'static str = "inbox-batch";
        const REQUEST_SCHEMA: &'static str = "{}";
        const INBOX_SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS inbox_test_batch (id text NOT NULL);";
        async fn handle_batch(&self, batch: Vec<(Self::Request, Context)>) -> BatchResult<Self::Reply> {
            self.0.lock().expect("sizes").push(batch.len());
            let inbox = batch[0].1.inbox.clone().expect("the batch's transaction");
            let mut ids = Vec::new();
            let results = batch
                .iter()
                .map(|(request, context)| match request["op"].as_str() {
                    Some("fail") => Err(HandlerError::permanent("scripted", "no")),
                    Some("flaky") if context.invocation == 1 => Err(HandlerError::transient("scripted", "later")),
                    _ => {
                        ids.push(request["id"].as_str().unwrap_or_default().to_owned());
                        Ok(serde_json::json!({ "id": request["id"] }))
                    }
                })
                .collect();
            inbox
                .execute("INSERT INTO inbox_test_batch (id) SELECT unnest($1::text[])", &[&ids])
                .await
                .map_err(|e| HandlerError::transient("db", e))?;
            Ok(results)
        }
    }

    let url = courier_tests::postgres::url();
    let broker = MemoryBroker::new();
    let mut settings = Settings::defaults(Rows::NAME);
    settings.batch = Some(BatchSettings { size: 4, wait: Duration::from_millis(500) });
    settings.inbox = Some(courier::InboxSettings {
        url,
        retention: Duration::from_secs(60),
        bounds: courier::InboxBounds { timeout: Duration::from_secs(5), connections: 16 },
    });
    broker.declare(&settings.topology()).await.expect("declare");
    let handler = Rows::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(courier::run(
        settings.clone(),
        broker.clone(),
        courier::Batched(handler.clone()),
        stop.clone().cancelled_owned(),
    ));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let request = |op: &str| {
        let id = format!("{run}-{op}");
        let headers = [(h::MESSAGE_ID, id.as_str()), (h::CORRELATION_ID, id.as_str())];
        Message {
            payload: serde_json::json!({ "id": id, "op": op }).to_string().into(),
            headers: headers.into_iter().map(|(k, v)| (k.into(), v.to_owned())).collect(),
            key: None,
        }
    };
    let ops = ["ok-1", "ok-2", "fail", "flaky"];
    for op in ops {
        broker.publish(&settings.queue, &request(op)).await.expect("publish");
    }
    let mut statuses = std::collections::BTreeMap::new();
    for _ in ops {
        let reply = broker.receive(&settings.replies, Duration::from_secs(10)).await.expect("a reply");
        let id = reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default();
        statuses.insert(id.replace(&format!("{run}-"), ""), reply.headers.get(h::STATUS).cloned().unwrap_or_default());
    }
    let expected = [("fail", "error"), ("flaky", "ok"), ("ok-1", "ok"), ("ok-2", "ok")];
    assert_eq!(statuses, expected.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect());
    // Sent again: answered from the inbox, with the reply it got.
    broker.publish(&settings.queue, &request("ok-1")).await.expect("publish");
    let again = broker.receive(&settings.replies, Duration::from_secs(10)).await.expect("a reply");
    assert_eq!(again.headers.get(h::STATUS).map(String::as_str), Some("ok"));
    assert_eq!(*handler.0.lock().expect("sizes"), [4, 1], "one batch, then the flaky one's retry alone");

    let database = courier_tests::postgres::connect().await;
    let ids: Vec<String> = ops.iter().map(|op| format!("{run}-{op}")).collect();
    let rows =
        database.query("SELECT id FROM inbox_test_batch WHERE id = ANY($1) ORDER BY id", &[&ids]).await.expect("query");
    let written: Vec<String> = rows.iter().map(|row| row.get::<_, String>(0).replace(&format!("{run}-"), "")).collect();
    assert_eq!(written, ["flaky", "ok-1", "ok-2"], "each passed request written once, the failed one never");
    let answered = database
        .query(
            "SELECT message_id FROM courier_inbox WHERE worker = $1 AND message_id = ANY($2) ORDER BY message_id",
            &[&Rows::NAME, &ids],
        )
        .await
        .expect("query");
    assert_eq!(answered.len(), 3, "the failed request's claim released");
    let first_batch: Vec<String> = [&ids[0], &ids[1]].into_iter().cloned().collect();
    let transactions = database
        .query(
            "SELECT DISTINCT xmin::text FROM (SELECT xmin FROM inbox_test_batch WHERE id = ANY($1) \
             UNION ALL SELECT xmin FROM courier_inbox WHERE worker = $2 AND message_id = ANY($1)) AS written",
            &[&first_batch, &Rows::NAME],
        )
        .await
        .expect("query");
    assert_eq!(transactions.len(), 1, "the first batch's rows and inbox rows in one transaction");
    stop.cancel();
    worker.await.expect("worker task").expect("worker ends cleanly");
}

/// The byte budget (`--max-in-flight-bytes`): with room for 64 handlers but a budget of
/// 1 MiB, requests of 400 KB run three at a time (admitted while less than the budget is
/// held); with the default budget all six run at once. Every request is answered either way.
#[tokio::test(start_paused = true)]
async fn the_byte_budget_bounds_the_requests_in_flight() {
    assert_eq!(most_at_once_with_budget(1 << 20).await, 3);
    assert_eq!(most_at_once_with_budget(64 << 20).await, 6);
}

/// How many of six 400 KB requests a worker with `budget` handled at once.
async fn most_at_once_with_budget(budget: usize) -> usize {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use courier::{Context, Handler, HandlerError, MemoryBroker, Message, Settings, Transport, contract::headers as h};

    /// Holds each request for a second; counts how many it holds at once.
    #[derive(Clone, Debug, Default)]
    struct Slow {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }
    impl Handler for Slow {
        type Request = serde_json::Value;
        type Reply = serde_json::Value;
        const NAME: &'static str = "budgeted";
        const REQUEST_SCHEMA: &'static str = "{}";
        async fn handle(&self, _: Self::Request, _: &Context) -> Result<Self::Reply, HandlerError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(serde_json::json!({}))
        }
    }

    let broker = MemoryBroker::new();
    let mut settings = Settings::defaults(Slow::NAME);
    settings.max_in_flight_bytes = budget;
    broker.declare(&settings.topology()).await.expect("declare");
    let handler = Slow::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker =
        tokio::spawn(courier::run(settings.clone(), broker.clone(), handler.clone(), stop.clone().cancelled_owned()));
    let payload = serde_json::to_vec(&serde_json::json!({ "pad": "x".repeat(400_000) })).expect("json");
    for n in 0..6 {
        let headers = [(h::CORRELATION_ID, format!("c-{n}"))];
        let request = Message {
            payload: payload.clone().into(),
            headers: headers.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            key: None,
        };
        broker.publish(&settings.queue, &request).await.expect("publish");
    }
    for _ in 0..6 {
        let reply = broker.receive(&settings.replies, Duration::from_secs(10)).await.expect("a reply");
        assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"), "{reply:?}");
    }
    stop.cancel();
    worker.await.expect("worker task").expect("worker ends cleanly");
    handler.most.load(Ordering::SeqCst)
}

/// `--retry-in-place` at `--concurrency 1`: a request waiting out its tier's delay gives
/// its handler slot up, and takes it back for its next round, though the worker's loop
/// is waiting for a delivery meanwhile (the lane it holds may be what keeps one from
/// coming). The reply follows the tier's delay.
#[tokio::test(start_paused = true)]
async fn a_request_retrying_in_place_gets_its_slot_back_at_concurrency_one() {
    use std::time::Duration;

    use courier::{
        MemoryBroker, Message, RetryPolicy, Settings, Transport,
        contract::headers as h,
        testing::{ScriptHandler, ScriptRequest},
    };

    let broker = MemoryBroker::new();
    let mut settings = Settings::defaults(<ScriptHandler as courier::Handler>::NAME);
    settings.concurrency = 1;
    settings.retry_in_place = true;
    settings.breaker = None;
    let delays = vec![Duration::from_secs(2)];
    settings.retry =
        RetryPolicy::new(1, Duration::from_millis(100), Duration::from_secs(1), false, delays).expect("valid policy");
    broker.declare(&settings.topology()).await.expect("declare");
    let handler = ScriptHandler::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker =
        tokio::spawn(courier::run(settings.clone(), broker.clone(), handler.clone(), stop.clone().cancelled_owned()));
    let request = ScriptRequest { id: "in-place".into(), op: "flaky".into(), n: 1 };
    let headers = [(h::CORRELATION_ID, "in-place")];
    let message = Message {
        payload: serde_json::to_vec(&request).expect("json").into(),
        headers: headers.into_iter().map(|(k, v)| (k.into(), v.to_owned())).collect(),
        key: None,
    };
    let sent = tokio::time::Instant::now();
    broker.publish(&settings.queue, &message).await.expect("publish");
    let reply =
        broker.receive(&settings.replies, Duration::from_secs(60)).await.expect("a reply after the tier's delay");
    let waited = sent.elapsed();
    println!("retry in place at concurrency 1: answered after {waited:?}");
    assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"), "{reply:?}");
    assert!(waited >= Duration::from_secs(2), "after the tier's delay: {waited:?}");
    let calls = handler.calls.lock().expect("call log").get("in-place").map_or(0, Vec::len);
    assert_eq!(calls, 2, "one failed round, one that passed");
    stop.cancel();
    worker.await.expect("worker task").expect("worker ends cleanly");
}
