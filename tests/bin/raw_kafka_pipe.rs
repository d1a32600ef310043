//! The baseline of the Kafka benchmark: the least a correct worker must do, written
//! directly on rdkafka. Consume in a group with `enable.auto.offset.store=false`,
//! produce the reply (idempotent, `acks=all`), store the offset after the delivery
//! report. No validation, ordering, retries or dead letters.
//!
//! With `--contract`, the reply is the wire contract's (`schemas/README.md`): the request's
//! key and five headers (correlation id, message id, content type, status, replied-by),
//! as the worker writes them; without it, only the correlation id. The difference is
//! librdkafka's cost of the contract's bytes, not the worker's code.
//!
//! Usage: raw-kafka-pipe <bootstrap> <topic> <group> [--contract]

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // On a runtime thread, as the worker's loop: tasks spawned from there go to that
    // thread's own queue instead of the shared one.
    tokio::spawn(pipe()).await?
}

async fn pipe() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let (contract, args) = match args.as_slice() {
        [rest @ .., last] if last == "--contract" => (true, rest),
        all => (false, all),
    };
    let [_, bootstrap, topic, group] = args else {
        return Err("usage: raw-kafka-pipe <bootstrap> <topic> <group> [--contract]".into());
    };
    let consumer: Arc<StreamConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()?,
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    consumer.subscribe(&[topic])?;
    eprintln!("Partitions assigned.");
    loop {
        let record = consumer.recv().await?;
        let mut reply_to = String::new();
        let mut correlation = String::new();
        if let Some(headers) = record.headers() {
            for header in headers.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                match header.key {
                    "courier-reply-to" => reply_to = value,
                    "courier-correlation-id" => correlation = value,
                    _ => {}
                }
            }
        }
        let mut headers =
            OwnedHeaders::new().insert(Header { key: "courier-correlation-id", value: Some(correlation.as_str()) });
        let message_id = contract.then(|| uuid::Uuid::new_v4().to_string());
        if let Some(message_id) = &message_id {
            headers = headers
                .insert(Header { key: "courier-message-id", value: Some(message_id.as_str()) })
                .insert(Header { key: "content-type", value: Some("application/json") })
                .insert(Header { key: "courier-status", value: Some("ok") })
                .insert(Header { key: "courier-replied-by", value: Some("raw-kafka-pipe") });
        }
        let payload = record.payload().unwrap_or_default().to_vec();
        let mut reply: FutureRecord<'_, [u8], Vec<u8>> = FutureRecord::to(&reply_to).payload(&payload).headers(headers);
        if contract && let Some(key) = record.key() {
            reply = reply.key(key);
        }
        // A full producer queue (a broker slow to acknowledge) is waited out, as the worker does.
        let delivery = loop {
            match producer.send_result(reply) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    reply = returned;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        };
        let (topic, partition, offset) = (record.topic().to_owned(), record.partition(), record.offset());
        let consumer = Arc::clone(&consumer);
        tokio::spawn(async move {
            if let Ok(Ok(_)) = delivery.await {
                let _ = consumer.store_offset(&topic, partition, offset);
            }
        });
    }
}
