//! The contract suite on the in-memory transport, under paused tokio time.

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
