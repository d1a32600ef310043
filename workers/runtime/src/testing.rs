//! The transport contract suite: one set of scenarios every transport must pass, run by
//! each transport's tests through a [`Harness`] (see [`contract_suite!`]).
//!
//! Each scenario starts a real worker (the production pipeline) on the transport with
//! a scripted handler, publishes requests, and checks replies and dead-letter records.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    contract::{
        failure::fingerprint,
        headers::{self as h, Headers},
        naming, timestamp,
    },
    handler::{Context, Handler, HandlerError},
    protobuf::Protobuf,
    retry::RetryPolicy,
    transport::{Message, Topology, Transport, memory::MemoryBroker},
    worker::{self, WorkerError},
};

/// What the suite needs from a broker besides the [`Transport`] itself.
pub trait Harness: Send + Sync + 'static {
    /// The transport under test.
    type Transport: Transport;
    /// True when tokio time is paused: schedules are then asserted exactly.
    const PAUSED_TIME: bool;
    /// A transport connected to the broker under test.
    fn transport(&self) -> impl Future<Output = Self::Transport> + Send;
    /// Create a worker's queues/topics (as the worker would, or ahead of it where the
    /// broker cannot create them on request).
    fn declare(&self, topology: &Topology) -> impl Future<Output = ()> + Send;
    /// Whether `declare_refusing` can make the broker refuse publishes (a broker without
    /// fault injection cannot; the scenario that needs it then says it is skipped).
    fn can_refuse(&self) -> bool {
        true
    }
    /// Whether `declare_refusing` and `delete` act on one destination only (a broker whose
    /// fault injection fails every publish cannot show what happens when just the reply or
    /// the dead-letter queue refuses).
    fn refuses_one_destination(&self) -> bool {
        true
    }
    /// Make the broker refuse publishes to `name` (created if missing) until `accept_publishes`.
    fn declare_refusing(&self, name: &str) -> impl Future<Output = ()> + Send;
    /// Let publishes to a queue from `declare_refusing` through again.
    fn accept_publishes(&self, name: &str) -> impl Future<Output = ()> + Send;
    /// Take one message from `queue`, waiting up to `timeout`.
    fn receive(&self, queue: &str, timeout: Duration) -> impl Future<Output = Option<Message>> + Send;
    /// Remove queues a scenario created (brokers that keep state between tests).
    fn delete(&self, queues: &[String]) -> impl Future<Output = ()> + Send;
}

/// A generated file (a JSON Schema from Rust types, an AsyncAPI document) must equal its
/// committed copy; with `COURIER_BLESS=1` the copy is rewritten first.
pub fn assert_generated_file(path: &std::path::Path, generated: &str) {
    if std::env::var_os("COURIER_BLESS").is_some() {
        std::fs::write(path, generated).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(committed, generated, "{} drifted from what generates it; rerun with COURIER_BLESS=1", path.display());
}

/// The in-memory broker as a harness.
#[derive(Clone, Debug, Default)]
pub struct MemoryHarness {
    /// The broker every transport of this harness shares.
    pub broker: MemoryBroker,
}

impl Harness for MemoryHarness {
    type Transport = MemoryBroker;
    const PAUSED_TIME: bool = true;

    async fn transport(&self) -> MemoryBroker {
        self.broker.clone()
    }

    async fn declare(&self, topology: &Topology) {
        self.broker.declare(topology).await.expect("declare topology");
    }

    async fn declare_refusing(&self, name: &str) {
        // A full queue with room for one refuses publishes.
        self.broker.declare_queue(name, Some(1));
        let filler = Message { payload: "filler".into(), ..Message::default() };
        self.broker.publish(name, &filler).await.expect("fill the capped queue");
    }

    async fn accept_publishes(&self, name: &str) {
        self.broker.purge(name);
    }

    async fn receive(&self, queue: &str, timeout: Duration) -> Option<Message> {
        self.broker.receive(queue, timeout).await
    }

    async fn delete(&self, queues: &[String]) {
        for queue in queues {
            self.broker.delete_queue(queue);
        }
    }
}

/// Generates one test per scenario: `contract_suite!(#[tokio::test] make_harness().await);`
#[macro_export]
macro_rules! contract_suite {
    (#[$attr:meta] $make:expr) => {
        $crate::contract_suite!(@each #[$attr] $make;
            request_reply, transient_failure_is_retried_with_backoff, permanent_failure_is_dead_lettered,
            bad_input_is_dead_lettered_and_the_worker_keeps_running, exhausted_retries_are_dead_lettered,
            unconfirmed_reply_redelivers_the_request, shutdown_loses_nothing_in_flight,
            expired_request_is_not_processed, unknown_reply_target_is_dead_lettered,
            handler_panic_is_dead_lettered, refused_reply_ends_after_the_redelivery_limit,
            refused_dead_letter_copy_is_retried_until_accepted, dead_letter_queue_gone_parks_the_record,
            bad_headers_are_answered_to_the_requester, protobuf_requests_are_answered_in_protobuf,
            reply_to_no_broker_can_name_is_unroutable,
            nothing_takes_the_message_and_the_handler_is_not_run_again, open_breaker_leaves_the_backlog_in_the_broker,
            only_transient_failures_open_the_breaker, a_request_that_always_fails_is_not_probed_forever,
            a_batch_settles_each_request_on_its_own, a_failed_batch_call_fails_each_of_its_requests,
            a_request_expiring_while_its_batch_fills_is_dead_lettered);
    };
    (@each #[$attr:meta] $make:expr; $($name:ident),* $(,)?) => {
        $( #[$attr] async fn $name() { $crate::testing::$name($make).await; } )*
    };
}

/// The scripted request: `op` says how the handler behaves. In protobuf: [`SCRIPT_PROTO`].
#[derive(Clone, Deserialize, Serialize, prost::Message)]
pub struct ScriptRequest {
    /// Identifies the request in the call log.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `echo`, `permanent`, `flaky` (fails transiently `n` times), `transient` (always), `slow` (`n` ms), `panic`,
    /// `dependency` (fails transiently while [`ScriptHandler::down`] is set, else `echo`).
    #[prost(string, tag = "2")]
    pub op: String,
    /// Parameter of `flaky` and `slow`.
    #[serde(default)]
    #[prost(uint64, tag = "3")]
    pub n: u64,
}

/// The scripted reply: `{"echo": <request id>}`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, prost::Message)]
pub struct ScriptReply {
    /// The request's id.
    #[prost(string, tag = "1")]
    pub echo: String,
}

/// The scripted handler's messages in protobuf.
pub const SCRIPT_PROTO: &str = r#"syntax = "proto3";
package contract;
message ScriptRequest { string id = 1; string op = 2; uint64 n = 3; }
message ScriptReply { string echo = 1; }
"#;

/// Handler invocation times by request id.
pub type CallLog = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// A handler that does what each request tells it, and logs when it was called.
#[derive(Clone, Debug, Default)]
pub struct ScriptHandler {
    /// When each request was handled.
    pub calls: CallLog,
    /// While set, `dependency` requests fail transiently, naming [`SCRIPTED_DEPENDENCY`].
    pub down: Arc<AtomicBool>,
    /// The size of each batch call (`--batch-size`).
    pub batches: Arc<Mutex<Vec<usize>>>,
    /// Batch calls to come that fail as a whole, transiently.
    pub failing_batches: Arc<AtomicU32>,
}

/// The dependency `dependency` requests fail on while [`ScriptHandler::down`] is set.
pub const SCRIPTED_DEPENDENCY: &str = "scripted";

const SCRIPT_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["id", "op"],
  "properties": {
    "id": {"type": "string"},
    "op": {"enum": ["echo", "permanent", "flaky", "transient", "slow", "panic", "dependency"]},
    "n": {"type": "integer", "minimum": 0}
  },
  "additionalProperties": false
}"#;

impl Handler for ScriptHandler {
    type Request = ScriptRequest;
    type Reply = ScriptReply;
    const NAME: &'static str = "contract";
    const REQUEST_SCHEMA: &'static str = SCRIPT_SCHEMA;
    const PROTOBUF: Option<Protobuf<ScriptRequest, ScriptReply>> =
        Some(Protobuf::new(SCRIPT_PROTO, "contract.ScriptRequest", "contract.ScriptReply"));

    async fn handle(&self, request: ScriptRequest, context: &Context) -> Result<ScriptReply, HandlerError> {
        self.calls.lock().expect("call log").entry(request.id.clone()).or_default().push(Instant::now());
        match request.op.as_str() {
            "permanent" => Err(HandlerError::permanent("scripted_permanent", "the script says no")),
            "panic" => panic!("the script panics"),
            "transient" => Err(HandlerError::transient("scripted_transient", "the script says later")),
            "dependency" if self.down.load(Ordering::Relaxed) => {
                Err(HandlerError::transient("scripted_down", "the dependency is down").dependency(SCRIPTED_DEPENDENCY))
            }
            "flaky" if u64::from(context.invocation) <= request.n => {
                Err(HandlerError::transient("scripted_flaky", format!("invocation {}", context.invocation)))
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(request.n)).await;
                Ok(ScriptReply { echo: request.id })
            }
            _ => Ok(ScriptReply { echo: request.id }),
        }
    }

    /// Each request on its own ([`crate::each`]), unless the call is to fail as a whole.
    async fn handle_batch(&self, batch: Vec<(ScriptRequest, Context)>) -> crate::BatchResult<ScriptReply> {
        self.batches.lock().expect("batch log").push(batch.len());
        if self.failing_batches.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(HandlerError::transient("scripted_batch_down", "the whole batch fails"));
        }
        Ok(crate::each(self, batch).await)
    }
}

/// A worker under test and the names it uses.
struct Run<Hn: Harness> {
    harness: Hn,
    settings: Settings,
    handler: ScriptHandler,
    stop: CancellationToken,
    worker: JoinHandle<Result<(), WorkerError>>,
}

/// How long to wait for something that should happen (generous for real brokers).
const PATIENCE: Duration = Duration::from_secs(20);
/// How long to watch for something that should not happen.
const QUIET: Duration = Duration::from_millis(500);

fn suite_settings() -> Settings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut settings = Settings::defaults(ScriptHandler::NAME);
    settings.queue = naming::requests(&format!("contract-{}", &id[..12]));
    settings.replies = naming::replies(&format!("contract-{}", &id[..12]));
    settings.instance = "suite-1".into();
    settings.concurrency = 8;
    settings.max_payload_bytes = 64 * 1024;
    settings.handler_timeout = Duration::from_secs(5);
    settings.shutdown_grace = Duration::from_secs(5);
    settings.retry = policy(3, &[]);
    settings.max_redeliveries = 2;
    // On in the scenarios about it only: elsewhere it would hold back their transient failures.
    settings.breaker = None;
    settings
}

fn policy(attempts: u32, delays: &[u64]) -> RetryPolicy {
    let delays = delays.iter().map(|ms| Duration::from_millis(*ms)).collect();
    RetryPolicy::new(attempts, Duration::from_millis(100), Duration::from_secs(1), false, delays).expect("valid policy")
}

impl<Hn: Harness> Run<Hn> {
    async fn start(harness: Hn, tune: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = suite_settings();
        tune(&mut settings);
        harness.declare(&settings.topology()).await;
        Self::start_with(harness, settings).await
    }

    async fn start_with(harness: Hn, settings: Settings) -> Self {
        let handler = ScriptHandler::default();
        let (stop, worker) = Self::spawn(&harness, &settings, &handler).await;
        Self { harness, settings, handler, stop, worker }
    }

    async fn spawn(
        harness: &Hn,
        settings: &Settings,
        handler: &ScriptHandler,
    ) -> (CancellationToken, JoinHandle<Result<(), WorkerError>>) {
        let stop = CancellationToken::new();
        let handler = handler.clone();
        let transport = harness.transport().await;
        let worker = tokio::spawn(worker::run(settings.clone(), transport, handler, stop.clone().cancelled_owned()));
        (stop, worker)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.worker.await.expect("worker task").expect("worker ends cleanly");
        self.harness.delete(&queues(&self.settings)).await;
    }

    fn dlq(&self) -> String {
        naming::dead_letter(&self.settings.queue)
    }

    async fn send(&self, payload: impl Into<bytes::Bytes>, extra: &[(&str, &str)]) -> String {
        let mut message = request(payload, extra);
        message.headers.get_or_insert_with(h::REPLY_TO.into(), || self.settings.replies.clone());
        let transport = self.harness.transport().await;
        transport.publish(&self.settings.queue, &message).await.expect("publish request");
        message.headers.get(h::MESSAGE_ID).cloned().unwrap_or_default()
    }

    async fn send_script(&self, op: &str, n: u64) -> String {
        // The script id is the correlation id, so call-log entries match replies.
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::json!({ "id": id, "op": op, "n": n });
        self.send_with_id(&id, body.to_string()).await
    }

    async fn send_with_id(&self, id: &str, payload: String) -> String {
        self.send(payload, &[(h::MESSAGE_ID, id), (h::CORRELATION_ID, id)]).await;
        id.to_owned()
    }

    async fn reply(&self) -> Message {
        self.harness.receive(&self.settings.replies, PATIENCE).await.expect("a reply within the patience limit")
    }

    async fn dead_letter(&self) -> Message {
        self.dead_letter_within(PATIENCE).await.expect("a dead-letter record within the patience limit")
    }

    async fn dead_letter_within(&self, wait: Duration) -> Option<Message> {
        self.harness.receive(&self.dlq(), wait).await
    }

    fn calls(&self, id: &str) -> Vec<Instant> {
        self.handler.calls.lock().expect("call log").get(id).cloned().unwrap_or_default()
    }
}

/// A request message with fresh ids; `extra` headers override.
fn request(payload: impl Into<bytes::Bytes>, extra: &[(&str, &str)]) -> Message {
    let id = uuid::Uuid::new_v4().to_string();
    let mut headers: Headers =
        [(h::MESSAGE_ID, id.as_str()), (h::CORRELATION_ID, id.as_str()), (h::CONTENT_TYPE, h::JSON)]
            .into_iter()
            .map(|(k, v)| (k.into(), v.to_owned()))
            .collect();
    for (k, v) in extra {
        headers.insert(h::name(k), (*v).to_owned());
    }
    Message { payload: payload.into(), headers, key: Some(id.into()) }
}

/// Every queue a scenario's worker declared.
fn queues(settings: &Settings) -> Vec<String> {
    let topology = settings.topology();
    let mut names = vec![topology.queue, topology.dead_letter, topology.parking, topology.replies];
    names.extend(topology.retry_tiers.into_iter().map(|tier| tier.name));
    names
}

/// Where a broker gives positions (Kafka), a dead-letter record names the topic it was read
/// from (`read_from`) with its partition and offset there; elsewhere it names none.
fn assert_position(record: &Message, read_from: &str) {
    let has = |name| record.headers.contains_key(name);
    if has(h::FAILURE_PARTITION) {
        assert_eq!(header(record, h::FAILURE_TOPIC), read_from, "the topic the partition and offset are in");
        assert!(has(h::FAILURE_OFFSET));
    } else {
        assert!(!has(h::FAILURE_TOPIC) && !has(h::FAILURE_OFFSET));
    }
}

fn header<'m>(message: &'m Message, name: &str) -> &'m str {
    message.headers.get(name).map_or("", String::as_str)
}

/// Checks `gap` against an expected delay: exact under paused time, within slack otherwise.
fn assert_gap<Hn: Harness>(gap: Duration, expected: Duration, what: &str) {
    if Hn::PAUSED_TIME {
        assert_eq!(gap, expected, "{what}");
    } else {
        assert!(gap >= expected && gap < expected + Duration::from_millis(1500), "{what}: {gap:?} vs {expected:?}");
    }
}

/// A request gets exactly one reply, with its correlation id and status ok.
pub async fn request_reply<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
    run.send(body, &[(h::CORRELATION_ID, &id), (h::TRACEPARENT, traceparent)]).await;
    let reply = run.reply().await;
    assert_eq!(header(&reply, h::CORRELATION_ID), id);
    assert_eq!(header(&reply, h::STATUS), "ok");
    // The same trace, with the worker's delivery as the parent span.
    let continued = header(&reply, h::TRACEPARENT);
    assert_eq!(crate::contract::trace::trace_id(continued), crate::contract::trace::trace_id(traceparent));
    assert_ne!(continued, traceparent);
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).expect("reply is JSON");
    assert_eq!(body, serde_json::json!({ "echo": id }));
    assert!(run.harness.receive(&run.settings.replies, QUIET).await.is_none(), "exactly one reply");
    assert!(run.harness.receive(&run.dlq(), QUIET).await.is_none(), "nothing dead-lettered");
    run.stop().await;
}

/// A transient failure is retried in-process with exponential backoff, then succeeds.
pub async fn transient_failure_is_retried_with_backoff<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| s.retry = policy(4, &[])).await;
    let id = run.send_script("flaky", 3).await;
    let reply = run.reply().await;
    assert_eq!(header(&reply, h::STATUS), "ok");
    assert_eq!(header(&reply, h::CORRELATION_ID), id);
    let calls = run.calls(&id);
    assert_eq!(calls.len(), 4, "three failures, then success");
    for (i, expected) in [100, 200, 400].into_iter().enumerate() {
        assert_gap::<Hn>(calls[i + 1] - calls[i], Duration::from_millis(expected), &format!("backoff {i}"));
    }
    run.stop().await;
}

/// A permanent failure goes to the DLQ at once, with every failure header; the
/// requester gets an error reply.
pub async fn permanent_failure_is_dead_lettered<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let before = SystemTime::now() - Duration::from_secs(1);
    let id = uuid::Uuid::new_v4().to_string();
    let payload = format!("{{ \"id\" : \"{id}\", \"op\": \"permanent\" }}"); // odd spacing: kept byte for byte
    run.send_with_id(&id, payload.clone()).await;
    let record = run.dead_letter().await;
    assert_eq!(record.payload, payload.as_bytes(), "payload byte for byte");
    assert_eq!(header(&record, h::CORRELATION_ID), id, "original headers kept");
    assert_eq!(header(&record, h::REPLY_TO), run.settings.replies);
    assert_eq!(header(&record, h::FAILURE_KIND), "permanent");
    assert_eq!(header(&record, h::FAILURE_CODE), "scripted_permanent");
    assert_eq!(header(&record, h::FAILURE_MESSAGE), "the script says no");
    assert_eq!(
        header(&record, h::FAILURE_FINGERPRINT),
        fingerprint(crate::contract::failure::FailureKind::Permanent, "contract", "scripted_permanent")
    );
    assert_eq!(header(&record, h::FAILURE_SOURCE), run.settings.queue);
    assert_position(&record, &run.settings.queue);
    assert_eq!(header(&record, h::FAILURE_ATTEMPTS), "1", "permanent failures are not retried");
    assert_eq!(header(&record, h::FAILURE_WORKER), "contract");
    assert_eq!(header(&record, h::FAILURE_INSTANCE), "suite-1");
    for name in [h::FAILURE_FIRST_AT, h::FAILURE_LAST_AT] {
        let at = timestamp::parse(header(&record, name)).unwrap_or_else(|| panic!("{name} is RFC 3339"));
        assert!(at >= before && at <= SystemTime::now() + Duration::from_secs(1), "{name}");
    }
    let reply = run.reply().await;
    assert_eq!(header(&reply, h::STATUS), "error");
    assert_eq!(header(&reply, h::ERROR_CODE), "scripted_permanent");
    let envelope = include_str!("../../../schemas/envelope/error-reply.schema.json");
    let envelope = crate::schema::RequestSchema::compile(envelope).expect("envelope schema");
    envelope.decode::<serde_json::Value>(&reply.payload).expect("the error reply matches its documented schema");
    assert_eq!(header(&reply, h::CORRELATION_ID), id);
    run.stop().await;
}

/// Invalid JSON, a schema violation, an oversized payload and a garbage header each land
/// in the DLQ with their kind; the worker keeps serving.
pub async fn bad_input_is_dead_lettered_and_the_worker_keeps_running<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let oversized = format!(r#"{{"id":"big","op":"echo","pad":"{}"}}"#, "x".repeat(100 * 1024));
    type Case<'a> = (Vec<u8>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (b"{not json".to_vec(), &[], "decode"),
        (b"\xff\xfe\x00binary".to_vec(), &[], "decode"),
        (br#"{"id": 7, "op": "echo"}"#.to_vec(), &[], "schema"),
        (br#"{"id": "x", "op": "dance"}"#.to_vec(), &[], "schema"),
        (oversized.into_bytes(), &[], "too-large"),
        (br#"{"id": "x", "op": "echo"}"#.to_vec(), &[(h::ATTEMPT, "three")], "decode"),
    ];
    for (payload, headers, kind) in cases {
        run.send(payload.clone(), headers).await;
        let record = run.dead_letter().await;
        assert_eq!(header(&record, h::FAILURE_KIND), kind);
        assert_eq!(record.payload, payload, "{kind}: payload kept byte for byte");
        assert!(!header(&record, h::FAILURE_MESSAGE).is_empty(), "{kind}: a reason is given");
        let reply = run.reply().await;
        assert_eq!(header(&reply, h::STATUS), "error", "{kind}: the requester is told");
    }
    let id = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), id, "still serving");
    run.stop().await;
}

/// A failure that stays transient goes through every retry tier (each really delays),
/// then to the DLQ with the total attempt count.
pub async fn exhausted_retries_are_dead_lettered<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| s.retry = policy(2, &[300, 600])).await;
    let id = run.send_script("transient", 0).await;
    let record = run.dead_letter().await;
    assert_eq!(header(&record, h::FAILURE_KIND), "transient");
    assert_eq!(header(&record, h::FAILURE_CODE), "scripted_transient");
    assert_eq!(header(&record, h::FAILURE_ATTEMPTS), "6", "2 invocations x 3 rounds");
    assert_eq!(header(&record, h::ATTEMPT), "3", "the attempt count survived the round trips");
    assert_eq!(header(&record, h::FAILURE_SOURCE), run.settings.queue, "replay goes to the work queue");
    let last_tier = run.settings.topology().retry_tiers.pop().expect("two tiers").name;
    assert_position(&record, &last_tier);
    let first = timestamp::parse(header(&record, h::FAILURE_FIRST_AT)).expect("first-at");
    let last = timestamp::parse(header(&record, h::FAILURE_LAST_AT)).expect("last-at");
    assert!(first <= last);
    let calls = run.calls(&id);
    assert_eq!(calls.len(), 6);
    // Round boundaries: calls 1→2 and 3→4 are the tier delays (plus nothing else under paused time).
    assert_gap::<Hn>(calls[2] - calls[1], Duration::from_millis(300), "tier 1");
    assert_gap::<Hn>(calls[4] - calls[3], Duration::from_millis(600), "tier 2");
    assert_eq!(header(&run.reply().await, h::STATUS), "error");
    run.stop().await;
}

/// A reply the broker refuses leaves the request unacked: it is delivered again and
/// answered once the reply can be published. Nothing is lost.
pub async fn unconfirmed_reply_redelivers_the_request<Hn: Harness>(harness: Hn) {
    if !harness.can_refuse() {
        eprintln!("skipped: this broker cannot be made to refuse publishes (covered on the others)");
        return;
    }
    let replies = format!("full-{}.replies", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let settings = suite_settings();
    let transport = harness.transport().await;
    harness.declare(&settings.topology()).await;
    // The request waits in the queue before the reply destination starts refusing.
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
    let request = request(body, &[(h::CORRELATION_ID, &id), (h::REPLY_TO, &replies)]);
    transport.publish(&settings.queue, &request).await.expect("publish request");
    harness.declare_refusing(&replies).await;
    let run = Run::start_with(harness, settings).await;
    // While the reply destination refuses, the request keeps coming back.
    let deadline = Instant::now() + PATIENCE;
    while run.calls(&id).len() < 2 {
        assert!(Instant::now() < deadline, "the request was not delivered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(run.harness.receive(&run.dlq(), Duration::from_millis(10)).await.is_none(), "not dead-lettered");
    run.harness.accept_publishes(&replies).await;
    let reply = loop {
        let reply = run.harness.receive(&replies, PATIENCE).await.expect("the reply once publishes pass");
        if header(&reply, h::CORRELATION_ID) == id {
            break reply;
        }
    };
    assert_eq!(header(&reply, h::STATUS), "ok");
    run.harness.delete(std::slice::from_ref(&replies)).await;
    run.stop().await;
}

/// Shutdown with messages in flight: what finishes within the grace period is answered,
/// the rest goes back to the broker and is answered by the next worker. None is lost.
pub async fn shutdown_loses_nothing_in_flight<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| {
        s.concurrency = 4;
        s.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        // Some finish within the grace period, some do not.
        ids.push(run.send_script("slow", if i % 2 == 0 { 100 } else { 2_000 }).await);
    }
    let deadline = Instant::now() + PATIENCE;
    while run.handler.calls.lock().expect("log").len() < 4 {
        assert!(Instant::now() < deadline, "the worker did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Run { harness, settings, handler, stop, worker } = run;
    stop.cancel();
    worker.await.expect("worker task").expect("clean stop");
    let (stop, worker) = Run::spawn(&harness, &settings, &handler).await;
    let mut answered = std::collections::HashSet::new();
    while answered.len() < ids.len() {
        // The restarted worker first rejoins its group, which tansu can take long over
        // while other tests load it (seen: more than 20 s once in a full run).
        let reply = harness.receive(&settings.replies, PATIENCE * 3).await.expect("every request is answered");
        answered.insert(header(&reply, h::CORRELATION_ID).to_owned());
    }
    assert!(ids.iter().all(|id| answered.contains(id)));
    stop.cancel();
    worker.await.expect("worker task").expect("clean stop");
    harness.delete(&queues(&settings)).await;
}

/// A request whose deadline passed is not processed: it is dead-lettered as `expired`.
pub async fn expired_request_is_not_processed<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let past = timestamp::format(SystemTime::now() - Duration::from_secs(60));
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
    run.send(body, &[(h::DEADLINE, &past), (h::CORRELATION_ID, &id)]).await;
    let record = run.dead_letter().await;
    assert_eq!(header(&record, h::FAILURE_KIND), "expired");
    assert_eq!(header(&record, h::DEADLINE), past);
    assert!(run.calls(&id).is_empty(), "the handler never ran");
    assert_eq!(header(&run.reply().await, h::ERROR_CODE), "deadline_exceeded");
    run.stop().await;
}

/// A reply-to outside the allowlist, or naming no existing queue, is dead-lettered as
/// `unroutable` instead of vanishing.
pub async fn unknown_reply_target_is_dead_lettered<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let missing = format!("nobody-{}.replies", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    for (reply_to, code) in [("orders.requests", "reply_not_allowed"), (missing.as_str(), "reply_unroutable")] {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
        run.send(body, &[(h::REPLY_TO, reply_to)]).await;
        let record = run.dead_letter().await;
        assert_eq!(header(&record, h::FAILURE_KIND), "unroutable", "{reply_to}");
        assert_eq!(header(&record, h::FAILURE_CODE), code, "{reply_to}");
        assert_eq!(header(&record, h::REPLY_TO), reply_to);
    }
    let id = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), id, "still serving");
    run.stop().await;
}

/// A handler that panics does not take the worker down nor loop: the request is
/// dead-lettered as permanent (`handler_panicked`).
pub async fn handler_panic_is_dead_lettered<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let id = run.send_script("panic", 0).await;
    let record = run.dead_letter().await;
    assert_eq!(header(&record, h::FAILURE_KIND), "permanent");
    assert_eq!(header(&record, h::FAILURE_CODE), "handler_panicked");
    assert!(header(&record, h::FAILURE_MESSAGE).contains("the script panics"));
    assert_eq!(run.calls(&id).len(), 1, "not retried");
    assert_eq!(header(&run.reply().await, h::ERROR_CODE), "handler_panicked");
    let id = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), id, "still serving");
    run.stop().await;
}

/// A reply destination that refuses every publish: the request goes back to the broker
/// (the handler runs again each round), then, past `--max-redeliveries`, it is
/// dead-lettered as `undeliverable` instead of looping forever.
pub async fn refused_reply_ends_after_the_redelivery_limit<Hn: Harness>(harness: Hn) {
    if !harness.refuses_one_destination() {
        eprintln!("skipped: this broker refuses every publish or none (covered on the others)");
        return;
    }
    let replies = format!("full-{}.replies", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    harness.declare_refusing(&replies).await;
    let run = Run::start(harness, |_| {}).await;
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
    run.send(body, &[(h::CORRELATION_ID, &id), (h::MESSAGE_ID, &id), (h::REPLY_TO, &replies)]).await;
    let record = run.dead_letter().await;
    assert_eq!(header(&record, h::FAILURE_KIND), "undeliverable");
    assert_eq!(header(&record, h::FAILURE_CODE), "reply_refused");
    assert_eq!(header(&record, h::CORRELATION_ID), id);
    assert_eq!(run.calls(&id).len(), 3, "handled once per round: the first and two redeliveries");
    let other = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), other, "still serving");
    run.harness.delete(std::slice::from_ref(&replies)).await;
    run.stop().await;
}

/// A dead-letter queue that refuses for a while: the request goes back to the broker
/// until the copy is accepted; nothing is lost or parked.
pub async fn refused_dead_letter_copy_is_retried_until_accepted<Hn: Harness>(harness: Hn) {
    if !harness.can_refuse() {
        eprintln!("skipped: this broker cannot be made to refuse publishes (covered on the others)");
        return;
    }
    let settings = suite_settings();
    let dlq = naming::dead_letter(&settings.queue);
    harness.declare(&settings.topology()).await;
    // The request waits in the queue before the dead-letter queue starts refusing (on a
    // broker that refuses every publish, the request could not be sent after).
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "permanent" }).to_string();
    let mut request = request(body, &[(h::CORRELATION_ID, &id), (h::MESSAGE_ID, &id)]);
    request.headers.insert(h::REPLY_TO.into(), settings.replies.clone());
    harness.transport().await.publish(&settings.queue, &request).await.expect("publish request");
    harness.declare_refusing(&dlq).await;
    let run = Run::start_with(harness, settings).await;
    let deadline = Instant::now() + PATIENCE;
    while run.calls(&id).len() < 2 {
        assert!(Instant::now() < deadline, "the request was not delivered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.harness.accept_publishes(&dlq).await;
    let record = run.dead_letter().await;
    assert_eq!(header(&record, h::FAILURE_KIND), "permanent");
    assert_eq!(header(&record, h::CORRELATION_ID), id);
    assert!(run.calls(&id).len() <= 3, "within the redelivery limit");
    assert_eq!(header(&run.reply().await, h::ERROR_CODE), "scripted_permanent");
    run.stop().await;
}

/// A dead-letter queue deleted under a running worker: the copy goes to the parking queue,
/// the requester gets its error reply, and the worker keeps serving.
pub async fn dead_letter_queue_gone_parks_the_record<Hn: Harness>(harness: Hn) {
    if !harness.refuses_one_destination() {
        eprintln!("skipped: this broker cannot lose one destination (covered on the others)");
        return;
    }
    let run = Run::start(harness, |_| {}).await;
    // Once the worker answers, it has declared its topology: the deletion stays.
    let first = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), first);
    let parking = naming::parking(&run.settings.queue);
    run.harness.delete(&[run.dlq()]).await;
    let id = run.send_script("permanent", 0).await;
    let record = run.harness.receive(&parking, PATIENCE).await.expect("the record in the parking queue");
    assert_eq!(header(&record, h::FAILURE_KIND), "permanent");
    assert_eq!(header(&record, h::CORRELATION_ID), id);
    assert_eq!(header(&run.reply().await, h::ERROR_CODE), "scripted_permanent");
    assert_eq!(run.calls(&id).len(), 1, "parked at once, not redelivered");
    let other = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), other, "still serving");
    run.stop().await;
}

/// Optional headers a producer got wrong never cost it its answer: a malformed
/// `traceparent` is ignored, forged counters are clamped, an earlier round's failure
/// headers are carried along; a malformed deadline or attempt is a `bad_header` dead
/// letter whose error reply reaches the request's own reply-to and correlation id.
pub async fn bad_headers_are_answered_to_the_requester<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |_| {}).await;
    let mine = format!("client-{}.replies", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    run.harness.declare(&Topology::replies_only(&mine)).await;
    let answered: [&[(&str, &str)]; 4] = [
        &[(h::TRACEPARENT, "00-not-a-trace-01")],
        &[(h::ATTEMPT, "99999999999999999999")],
        &[(h::FAILURE_ATTEMPTS, "many"), (h::FAILURE_FIRST_AT, "yesterday")],
        &[("x-custom", "carried")],
    ];
    for extra in answered {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
        let mut headers = vec![(h::CORRELATION_ID, id.as_str()), (h::REPLY_TO, mine.as_str())];
        headers.extend_from_slice(extra);
        run.send(body, &headers).await;
        let reply = run.harness.receive(&mine, PATIENCE).await.expect("a reply");
        assert_eq!(header(&reply, h::CORRELATION_ID), id, "{extra:?}");
        assert_eq!(header(&reply, h::STATUS), "ok", "{extra:?}");
    }
    let refused = [
        (h::DEADLINE, "tomorrow", "bad_header"),
        (h::ATTEMPT, "0", "bad_header"),
        (h::CONTENT_TYPE, "text/plain", "unsupported_content_type"),
    ];
    for (name, value, code) in refused {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
        run.send(body, &[(h::CORRELATION_ID, &id), (h::REPLY_TO, &mine), (name, value)]).await;
        let record = run.dead_letter().await;
        assert_eq!(header(&record, h::FAILURE_CODE), code, "{name}");
        let reply = run.harness.receive(&mine, PATIENCE).await.expect("an error reply to the requester");
        assert_eq!(header(&reply, h::CORRELATION_ID), id, "{name}");
        assert_eq!(header(&reply, h::ERROR_CODE), code, "{name}");
        assert!(run.calls(&id).is_empty(), "{name}: not handled");
    }
    run.harness.delete(std::slice::from_ref(&mine)).await;
    run.stop().await;
}

/// A request sent as protobuf is answered in protobuf, and its failures keep their
/// documented outcomes in that codec: a handler's refusal, a payload that is not a message
/// of the request type (`decode`, kept byte for byte) and one that breaks the request
/// schema (`schema`) are dead-lettered with error replies in the protobuf envelope.
pub async fn protobuf_requests_are_answered_in_protobuf<Hn: Harness>(harness: Hn) {
    use prost::Message as _;

    use crate::contract::{codec::Codec, error_reply::ErrorReply};

    let run = Run::start(harness, |_| {}).await;
    let id = uuid::Uuid::new_v4().to_string();
    let ask = |op: &str| ScriptRequest { id: id.clone(), op: op.into(), n: 0 }.encode_to_vec();
    let protobuf = [(h::CORRELATION_ID, id.as_str()), (h::CONTENT_TYPE, h::PROTOBUF)];
    run.send(ask("echo"), &protobuf).await;
    let reply = run.reply().await;
    assert_eq!(header(&reply, h::STATUS), "ok");
    assert_eq!(header(&reply, h::CONTENT_TYPE), h::PROTOBUF, "answered in the request's codec");
    assert_eq!(ScriptReply::decode(&reply.payload[..]).ok(), Some(ScriptReply { echo: id.clone() }));
    assert!(run.dead_letter_within(QUIET).await.is_none(), "nothing dead-lettered");

    let cases: [(Vec<u8>, &str, &str); 3] = [
        (ask("permanent"), "permanent", "scripted_permanent"),
        (b"\x0a\x05ab".to_vec(), "decode", "invalid_protobuf"),
        (ask("dance"), "schema", "schema_violation"),
    ];
    for (payload, kind, code) in cases {
        run.send(payload.clone(), &protobuf).await;
        let record = run.dead_letter().await;
        assert_eq!((header(&record, h::FAILURE_KIND), header(&record, h::FAILURE_CODE)), (kind, code));
        assert_eq!(record.payload, payload, "{code}: payload kept byte for byte");
        assert_eq!(header(&record, h::CONTENT_TYPE), h::PROTOBUF, "{code}: its content type too");
        let reply = run.reply().await;
        assert_eq!(header(&reply, h::STATUS), "error", "{code}");
        assert_eq!(header(&reply, h::CONTENT_TYPE), h::PROTOBUF, "{code}");
        let envelope = ErrorReply::decode(Codec::Protobuf, &reply.payload).expect("the protobuf error envelope");
        assert_eq!((envelope.error.kind.as_str(), envelope.error.code.as_str()), (kind, code));
        assert!(!envelope.error.message.is_empty(), "{code}: a reason is given");
    }
    let json = run.send_script("echo", 0).await;
    let reply = run.reply().await;
    assert_eq!((header(&reply, h::CORRELATION_ID), header(&reply, h::CONTENT_TYPE)), (json.as_str(), h::JSON));
    run.stop().await;
}

/// A reply-to that no broker could name (600 characters, a NUL) is `unroutable` at once:
/// never a loop, and the worker keeps serving.
pub async fn reply_to_no_broker_can_name_is_unroutable<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| s.reply_allow = vec!["*".into()]).await;
    let long = format!("{}.replies", "x".repeat(600));
    for reply_to in [long.as_str(), "nul\0here.replies", "line\nbreak.replies"] {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
        run.send(body, &[(h::CORRELATION_ID, &id), (h::REPLY_TO, reply_to)]).await;
        let record = run.dead_letter().await;
        assert_eq!(header(&record, h::FAILURE_KIND), "unroutable", "{reply_to:?}");
        assert!(
            ["reply_to_invalid", "reply_unroutable"].contains(&header(&record, h::FAILURE_CODE)),
            "{reply_to:?}: {}",
            header(&record, h::FAILURE_CODE)
        );
        assert!(run.calls(&id).len() <= 1, "{reply_to:?}: not redelivered");
    }
    let other = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), other, "still serving");
    run.stop().await;
}

/// The reply refused on every round, and the dead-letter and parking queues gone: the
/// request keeps coming back (every 10 s), but its handler is not run again once given
/// up; when the dead-letter queue is back, the record lands there.
pub async fn nothing_takes_the_message_and_the_handler_is_not_run_again<Hn: Harness>(harness: Hn) {
    if !harness.refuses_one_destination() {
        eprintln!("skipped: this broker refuses every publish or none (covered on the others)");
        return;
    }
    let run = Run::start(harness, |_| {}).await;
    let first = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::CORRELATION_ID), first, "the worker declared its topology");
    let replies = format!("full-{}.replies", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    run.harness.declare_refusing(&replies).await;
    let parking = naming::parking(&run.settings.queue);
    run.harness.delete(&[run.dlq(), parking.clone()]).await;
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
    run.send(body, &[(h::CORRELATION_ID, &id), (h::MESSAGE_ID, &id), (h::REPLY_TO, &replies)]).await;
    // Given up after 1 + 2 rounds; then two more cycles of 10 s without the handler.
    let deadline = Instant::now() + PATIENCE;
    while run.calls(&id).len() < 3 {
        assert!(Instant::now() < deadline, "the rounds did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(run.calls(&id).len(), 3, "not handled again once given up");
    run.harness.declare(&run.settings.topology()).await;
    let record = run.harness.receive(&run.dlq(), PATIENCE).await.expect("the record once the queue is back");
    assert_eq!(header(&record, h::FAILURE_KIND), "undeliverable");
    assert_eq!(header(&record, h::FAILURE_CODE), "reply_refused");
    assert_eq!(run.calls(&id).len(), 3);
    run.harness.delete(std::slice::from_ref(&replies)).await;
    run.stop().await;
}

/// The breaker of the scenarios about it: open after `failures` failed rounds in a row,
/// probing after `cooldown` (doubling up to four times that).
fn breaker(failures: u32, cooldown: Duration) -> Option<crate::breaker::Policy> {
    Some(crate::breaker::Policy::new(failures, 1.0, 0, cooldown, cooldown * 4, 1).expect("valid breaker"))
}

/// Handler calls so far, every request together.
fn total_calls(handler: &ScriptHandler) -> usize {
    handler.calls.lock().expect("call log").values().map(Vec::len).sum()
}

/// While the dependency is down, the open breaker leaves the backlog in the broker: the
/// handler runs a few rounds and the probes only, nothing is dead-lettered, and a worker
/// stopped while open gives back what it held. Once the dependency is up, every request
/// is answered.
pub async fn open_breaker_leaves_the_backlog_in_the_broker<Hn: Harness>(harness: Hn) {
    const REQUESTS: usize = 200;
    let run = Run::start(harness, |s| {
        s.retry = policy(2, &[300, 600, 1200]);
        s.breaker = breaker(3, Duration::from_millis(200));
    })
    .await;
    run.handler.down.store(true, Ordering::Relaxed);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..REQUESTS {
        ids.insert(run.send_script("dependency", 0).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Stopped while open: what it held goes back to the broker.
    let Run { harness, settings, handler, stop, worker } = run;
    stop.cancel();
    worker.await.expect("worker task").expect("clean stop");
    let (stop, worker) = Run::spawn(&harness, &settings, &handler).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let while_down = total_calls(&handler);
    handler.down.store(false, Ordering::Relaxed);

    let mut answered: HashMap<String, usize> = HashMap::new();
    while answered.len() < REQUESTS {
        let reply = harness.receive(&settings.replies, PATIENCE * 3).await.expect("every request is answered");
        assert_eq!(header(&reply, h::STATUS), "ok", "answered once the dependency is up");
        *answered.entry(header(&reply, h::CORRELATION_ID).to_owned()).or_default() += 1;
    }
    while let Some(reply) = harness.receive(&settings.replies, QUIET).await {
        *answered.entry(header(&reply, h::CORRELATION_ID).to_owned()).or_default() += 1;
    }
    let duplicates: usize = answered.values().map(|n| n - 1).sum();
    eprintln!("breaker: {REQUESTS} requests, {while_down} handler calls while down, {duplicates} duplicate replies");
    assert!(answered.keys().all(|id| ids.contains(id)));
    let dlq = naming::dead_letter(&settings.queue);
    assert!(harness.receive(&dlq, QUIET).await.is_none(), "nothing dead-lettered");
    assert!(
        while_down < REQUESTS / 2,
        "{while_down} handler calls for {REQUESTS} requests while the dependency was down: the backlog was not held"
    );
    stop.cancel();
    worker.await.expect("worker task").expect("clean stop");
    harness.delete(&queues(&settings)).await;
}

/// Permanent failures say nothing about a dependency: a stream of them mixed with
/// successes never opens the breaker (an open one would hold the rest for an hour), while
/// two transient failures in a row do.
pub async fn only_transient_failures_open_the_breaker<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| {
        s.retry = policy(1, &[]);
        s.breaker = Some(
            crate::breaker::Policy::new(2, 0.5, 4, Duration::from_secs(3600), Duration::from_secs(3600), 1)
                .expect("valid breaker"),
        );
    })
    .await;
    for i in 0..20 {
        run.send_script(if i % 4 == 3 { "echo" } else { "permanent" }, 0).await;
    }
    let mut statuses = HashMap::<String, usize>::new();
    for _ in 0..20 {
        *statuses.entry(header(&run.reply().await, h::STATUS).to_owned()).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([("ok".to_owned(), 5), ("error".to_owned(), 15)]));
    for _ in 0..15 {
        assert_eq!(header(&run.dead_letter().await, h::FAILURE_KIND), "permanent");
    }
    // Two transient failures in a row: the first is dead-lettered, the second opened it
    // and went back to the broker; nothing is taken after that.
    run.send_script("transient", 0).await;
    assert_eq!(header(&run.dead_letter().await, h::FAILURE_KIND), "transient");
    let opener = run.send_script("transient", 0).await;
    // Sent once the second failure is in the handler: on Kafka a request on another key
    // sent beside it may be taken before the breaker opens, in its own lane.
    while run.calls(&opener).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held = run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::STATUS), "error", "the first transient failure's error reply");
    if let Some(reply) = run.harness.receive(&run.settings.replies, QUIET * 4).await {
        panic!(
            "the open breaker holds {held}, yet {} was answered {:?}",
            header(&reply, h::CORRELATION_ID),
            header(&reply, h::STATUS)
        );
    }
    assert!(run.harness.receive(&run.dlq(), QUIET).await.is_none(), "the second went back to the broker");
    run.stop().await;
}

/// A request that fails even with its dependency up cannot stall the worker: it opens the
/// breaker, is given back, comes first as the probe, and a probe's round runs to its end,
/// so it moves on to a retry tier and then the dead-letter queue while the rest is served.
pub async fn a_request_that_always_fails_is_not_probed_forever<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| {
        s.retry = policy(1, &[200]);
        s.breaker = breaker(1, Duration::from_millis(100));
    })
    .await;
    let poison = run.send_script("transient", 0).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        ids.insert(run.send_script("echo", 0).await);
    }
    let record = run.dead_letter().await;
    assert_eq!(header(&record, h::CORRELATION_ID), poison);
    assert_eq!(header(&record, h::FAILURE_KIND), "transient");
    let mut answered = std::collections::HashSet::new();
    while answered.len() < ids.len() + 1 {
        answered.insert(header(&run.reply().await, h::CORRELATION_ID).to_owned());
    }
    assert!(ids.iter().all(|id| answered.contains(id)) && answered.contains(&poison));
    run.stop().await;
}

/// Batches (`--batch-size 8`): sixteen requests, one of them poison and two flaky, are
/// handed to the handler in batches of more than one (on Kafka at most one per ordering
/// lane: the partition here); the poison one alone is dead-lettered, the flaky ones alone
/// are called again, and every other request is answered once.
pub async fn a_batch_settles_each_request_on_its_own<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| {
        s.batch = Some(crate::BatchSettings { size: 8, wait: Duration::from_millis(300) });
    })
    .await;
    let poison = run.send_script("permanent", 0).await;
    let flaky = [run.send_script("flaky", 1).await, run.send_script("flaky", 1).await];
    let mut echoes = Vec::new();
    for _ in 0..13 {
        echoes.push(run.send_script("echo", 0).await);
    }
    let mut statuses = HashMap::new();
    for _ in 0..16 {
        let reply = run.reply().await;
        statuses.insert(header(&reply, h::CORRELATION_ID).to_owned(), header(&reply, h::STATUS).to_owned());
    }
    assert_eq!(statuses.len(), 16, "one reply each");
    assert_eq!(statuses[&poison], "error");
    assert!(echoes.iter().chain(&flaky).all(|id| statuses[id] == "ok"), "{statuses:?}");
    let dead = run.dead_letter().await;
    assert_eq!(header(&dead, h::CORRELATION_ID), poison, "only the poison request is dead-lettered");
    assert!(run.dead_letter_within(QUIET).await.is_none());
    assert!(flaky.iter().all(|id| run.calls(id).len() == 2), "the flaky ones called again");
    assert!(echoes.iter().all(|id| run.calls(id).len() == 1), "the others once");
    let batches = run.handler.batches.lock().expect("batch log").clone();
    assert!(batches.iter().all(|size| (1..=8).contains(size)), "{batches:?}");
    assert!(batches.iter().any(|size| *size > 1), "requests were batched: {batches:?}");
    assert_eq!(batches.iter().sum::<usize>(), 18, "sixteen requests, two of them twice: {batches:?}");
    run.stop().await;
}

/// A batch call that fails as a whole fails each of its requests transiently: each is
/// retried (in a later batch) and answered.
pub async fn a_failed_batch_call_fails_each_of_its_requests<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| {
        s.batch = Some(crate::BatchSettings { size: 4, wait: Duration::from_millis(300) });
    })
    .await;
    run.handler.failing_batches.store(1, Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(run.send_script("echo", 0).await);
    }
    for _ in 0..4 {
        assert_eq!(header(&run.reply().await, h::STATUS), "ok");
    }
    assert!(ids.iter().all(|id| run.calls(id).len() == 1), "each handled once after the failed call");
    let batches = run.handler.batches.lock().expect("batch log").clone();
    assert_eq!(batches.iter().sum::<usize>(), 4 + batches[0], "the failed call's requests came again: {batches:?}");
    assert!(run.dead_letter_within(QUIET).await.is_none());
    run.stop().await;
}

/// A request whose deadline passes while its batch fills never reaches the handler: it
/// is dead-lettered as `expired`.
pub async fn a_request_expiring_while_its_batch_fills_is_dead_lettered<Hn: Harness>(harness: Hn) {
    let run = Run::start(harness, |s| {
        s.batch = Some(crate::BatchSettings { size: 8, wait: Duration::from_secs(4) });
    })
    .await;
    // Consuming first (a Kafka consumer joins its group before it fetches).
    run.send_script("echo", 0).await;
    assert_eq!(header(&run.reply().await, h::STATUS), "ok");
    let deadline = std::time::SystemTime::now() + Duration::from_secs(2);
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({ "id": id, "op": "echo" }).to_string();
    let deadline_header = crate::contract::timestamp::format(deadline);
    run.send(body, &[(h::CORRELATION_ID, &id), (h::DEADLINE, &deadline_header)]).await;
    if Hn::PAUSED_TIME {
        // Admitted and waiting in its batch; then the wall clock passes the deadline
        // (paused time does not move it).
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::thread::sleep(Duration::from_millis(2_100));
    }
    let dead = run.dead_letter().await;
    assert_eq!(header(&dead, h::FAILURE_CODE), crate::contract::failure::code::DEADLINE_EXCEEDED);
    assert!(header(&dead, h::FAILURE_MESSAGE).contains("batch filled"), "{dead:?}");
    assert!(run.calls(&id).is_empty(), "never handled");
    assert_eq!(*run.handler.batches.lock().expect("batch log"), [1], "the first request's batch only");
    run.stop().await;
}
