//! The baseline of the RabbitMQ benchmark: the least a correct worker must do, written
//! directly on lapin. Consume with a prefetch, publish the reply (persistent, mandatory,
//! confirmed), ack the request after the confirm. No validation, retries or dead letters.
//!
//! Usage: raw-amqp-pipe <amqp-url> <queue> <prefetch>

use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions},
    types::FieldTable,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // On a runtime thread, as the worker's loop: tasks spawned from there go to that
    // thread's own queue instead of the shared one.
    tokio::spawn(pipe()).await?
}

async fn pipe() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, prefetch] = args.as_slice() else {
        return Err("usage: raw-amqp-pipe <amqp-url> <queue> <prefetch>".into());
    };
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let consume = connection.create_channel().await?;
    consume.basic_qos(prefetch.parse()?, BasicQosOptions::default()).await?;
    let publish = connection.create_channel().await?;
    publish.confirm_select(Default::default()).await?;
    let mut consumer = consume
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    eprintln!("Consuming.");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let publish = publish.clone();
        tokio::spawn(async move {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_correlation_id(delivery.properties.correlation_id().clone().unwrap_or_default());
            let reply_to = delivery.properties.reply_to().clone().unwrap_or_default();
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let confirmed = match publish.basic_publish("".into(), reply_to, options, &delivery.data, props).await {
                Ok(confirm) => confirm.await.map(|c| c.is_ack()).unwrap_or(false),
                Err(_) => false,
            };
            if confirmed {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            } else {
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
        });
    }
    Ok(())
}
