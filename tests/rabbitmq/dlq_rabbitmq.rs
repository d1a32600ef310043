//! `courier dlq` on the local RabbitMQ, with the real greeter and CLI processes.

use courier::contract::failure::FailureKind;
use courier_tests::{
    dlq::{self, Drill},
    rabbitmq::{RabbitDrill, RawClient, names},
};
use lapin::types::{AMQPValue, FieldArray, LongString};

courier_tests::dlq_drills!(courier_tests::rabbitmq::RabbitDrill::new("dlq_rabbitmq").await);

/// Another worker's work queue, declared for one test and deleted when dropped.
struct OtherQueue(String);

impl OtherQueue {
    async fn declare(client: &RawClient) -> Self {
        let (queue, _) = names("dlq_rabbitmq-ledger");
        client.declare(&queue).await;
        Self(queue)
    }
}

impl Drop for OtherQueue {
    fn drop(&mut self) {
        let queue = self.0.clone();
        // A runtime of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let client = RawClient::connect().await;
                let _ = client.channel.queue_delete(queue.as_str().into(), Default::default()).await;
            });
        })
        .join();
    }
}

/// Issue 30 with another worker's work queue (declared, so a replay there would be
/// delivered): records naming it stay in the dead-letter queue without `--to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_naming_another_workers_queue_stay_in_the_dead_letter_queue() {
    let mut drill = RabbitDrill::new("dlq_rabbitmq").await;
    let other = OtherQueue::declare(&RawClient::connect().await).await;
    dlq::records_naming_another_source_stay(&mut drill, &other.0).await;
}

/// RabbitMQ's sender-selected distribution: a `CC` header (an array of routing keys)
/// routes a publish to those queues too. A record of the worker's own queue carrying one
/// is replayed to the work queue only: the copy `courier dlq replay` publishes carries no
/// `CC`/`BCC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_cc_header_does_not_route_its_replay() {
    let mut drill = RabbitDrill::new("dlq_rabbitmq").await;
    dlq::declare_topology(&drill);
    let client = RawClient::connect().await;
    let other = OtherQueue::declare(&client).await;
    let queue = drill.queue().to_owned();
    let record = dlq::dead_letter("cc", &queue, drill.replies(), FailureKind::Transient);
    let properties = courier::transport::amqp::properties(&record);
    let mut table = properties.headers().clone().unwrap_or_default();
    let routes = || AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(LongString::from(&*other.0))]));
    table.insert("CC".into(), routes());
    table.insert("BCC".into(), routes());
    client.publish(&format!("{queue}.dlq"), &record.payload, properties.with_headers(table)).await;
    // The forger's own publish is routed by its CC too: the broker honours the header here.
    assert_eq!(drill.take(&other.0).await.len(), 1, "RabbitMQ routed the forger's publish to {} as well", other.0);

    let out = dlq::courier_ok(&drill, &["dlq", "replay"]);
    println!("replay:\n{out}");
    assert!(out.contains("1 read: 1 replayed"), "{out}");
    let mut replayed = dlq::collect(&mut drill, &queue, |all| !all.is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    replayed.extend(drill.take(&queue).await);
    assert_eq!(dlq::by_id(&replayed), [("cc".to_owned(), 1)].into());
    let copies = drill.take(&other.0).await;
    assert!(copies.is_empty(), "the record's CC header routed {} cop(ies) of the replay to {}", copies.len(), other.0);
}
