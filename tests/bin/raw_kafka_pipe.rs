//! The baseline of the Kafka benchmark: the least a correct worker must do, written
//! directly on rdkafka. Consume in a group with `enable.auto.offset.store=false`,
//! produce the reply (idempotent, `acks=all`), store the offset after the delivery
//! report. No validation, ordering, retries or dead letters.
//!
//! Usage: raw-kafka-pipe <bootstrap> <topic> <group>

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
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
    let [_, bootstrap, topic, group] = args.as_slice() else {
        return Err("usage: raw-kafka-pipe <bootstrap> <topic> <group>".into());
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
        let headers =
            OwnedHeaders::new().insert(Header { key: "courier-correlation-id", value: Some(correlation.as_str()) });
        let payload = record.payload().unwrap_or_default().to_vec();
        let reply: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&reply_to).payload(&payload).headers(headers);
        let delivery = match producer.send_result(reply) {
            Ok(delivery) => delivery,
            Err((error, _)) => return Err(error.into()),
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
