//! A Kafka dead-letter topic as a [`DeadLetterStore`]. The topic is a log and is never rewritten:
//! a record leaves the dead-letter queue when an entry for it is written to the ledger
//! topic `<topic>.ledger` (key `<partition>:<offset>`). A batch is one Kafka transaction
//! holding the outputs and their ledger entries, so after a crash either both or neither
//! are visible (readers use `read_committed`). The transactional id is per topic: a new
//! run fences an older one and aborts whatever batch it left open. Records filtered out
//! stay pending and can be handled by a later run.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use rdkafka::{
    ClientContext, Message as _, Offset, TopicPartitionList,
    consumer::{Consumer, ConsumerContext, StreamConsumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer},
};

use super::{KafkaTransport, api_versions, client_config, convert, failed};
use crate::{
    contract::{naming, timestamp},
    transport::{
        BrokerError, Message, TransportError,
        dead_letters::{DeadLetterError, DeadLetterStore, Record, RecordId, Settlement},
    },
};

/// Partition and offset of a record.
type LogPosition = (i32, i64);

/// How long a transaction step or a read may take before the broker counts as unavailable.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One dead-letter (or parking) topic, opened for reading and settling.
pub struct KafkaDeadLetterStore {
    /// Asks whether a destination exists.
    transport: KafkaTransport,
    /// The topic read.
    topic: String,
    /// Its ledger topic, `<topic>.ledger`.
    ledger: String,
    /// Records already replayed, parked or purged.
    settled: HashSet<(i32, i64)>,
    /// Reads the topic up to where it ended when opened.
    reader: LogReader,
    /// Transactional producer; `None` for a read-only store.
    producer: Option<FutureProducer>,
    /// Pending records seen so far.
    seen: u64,
}

impl std::fmt::Debug for KafkaDeadLetterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetterStore").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaDeadLetterStore {
    /// Open `topic`. A store that will settle records (`writable`) creates the ledger
    /// if it is missing and fences any earlier run on the same topic first.
    pub async fn open(transport: &KafkaTransport, topic: &str, writable: bool) -> Result<Self, DeadLetterError> {
        let ledger = naming::ledger(topic);
        if writable {
            // Before anything is written, the ledger topic included.
            refuse_without_transactions(transport).await?;
        }
        let counts = transport.partition_counts(&[topic, &ledger]).await?;
        let Some(&partitions) = counts.get(topic) else { return Err(DeadLetterError::NotFound(topic.to_owned())) };
        let producer = if writable {
            if !counts.contains_key(&ledger) {
                // Compacted (keys are unique): entries never expire before their records.
                let compact = [("cleanup.policy", "compact")];
                transport.create_topics_with(&[&ledger], &compact).await?;
            }
            Some(transactional_producer(transport, topic).await?)
        } else {
            None
        };
        let ledger_partitions = match counts.get(&ledger) {
            Some(&n) => n,
            None if writable => transport.partition_counts(&[&ledger]).await?.get(&ledger).copied().unwrap_or(0),
            None => 0,
        };
        let mut settled = HashSet::new();
        if ledger_partitions > 0 {
            let mut reader = LogReader::start(transport, &ledger, ledger_partitions).await?;
            while let Some(entry) = reader.next().await? {
                if let Some(key) =
                    entry.message.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()).and_then(parse_key)
                {
                    settled.insert(key);
                }
            }
        }
        Ok(Self {
            transport: transport.clone(),
            topic: topic.to_owned(),
            ledger,
            settled,
            reader: LogReader::start(transport, topic, partitions).await?,
            producer,
            seen: 0,
        })
    }
}

impl DeadLetterStore for KafkaDeadLetterStore {
    fn pending(&self) -> Option<u64> {
        self.reader.finished().then_some(self.seen)
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DeadLetterError> {
        let mut records = Vec::new();
        while records.len() < max {
            let Some(entry) = self.reader.next().await? else { break };
            if self.settled.contains(&(entry.partition, entry.offset)) {
                continue;
            }
            self.seen += 1;
            records.push(Record {
                id: RecordId::Offset { partition: entry.partition, offset: entry.offset },
                message: entry.message,
            });
        }
        Ok(records)
    }

    async fn exists(&mut self, destination: &str) -> Result<bool, DeadLetterError> {
        Ok(self.transport.topic_exists(destination).await?)
    }

    async fn settle(&mut self, batch: Vec<Settlement>) -> Result<(), DeadLetterError> {
        let Some(producer) = self.producer.clone() else {
            return Err(DeadLetterError::Misuse("this store was opened read-only".into()));
        };
        let ledger = self.ledger.clone();
        let mut entries = Vec::with_capacity(batch.len());
        for settlement in batch {
            let RecordId::Offset { partition, offset } = settlement.id else {
                return Err(DeadLetterError::Misuse(format!("record {} is not from a Kafka topic", settlement.id)));
            };
            entries.push(((partition, offset), settlement.output));
        }
        let ids: Vec<(i32, i64)> = entries.iter().map(|(id, _)| *id).collect();
        tokio::task::spawn_blocking(move || commit(&producer, &ledger, &entries))
            .await
            .map_err(TransportError::broker)??;
        self.settled.extend(ids);
        Ok(())
    }

    async fn close(self) -> Result<(), DeadLetterError> {
        Ok(())
    }
}

/// Refuse a broker whose ApiVersions answer lists no EndTxn. A broker that cannot be
/// asked in plain Kafka protocol (TLS, SASL) is given the benefit of the doubt.
async fn refuse_without_transactions(transport: &KafkaTransport) -> Result<(), TransportError> {
    let bootstrap = transport.config().bootstrap.clone();
    let apis = tokio::task::spawn_blocking(move || api_versions::probe(&bootstrap, Duration::from_secs(5)))
        .await
        .map_err(TransportError::broker)?;
    if apis.is_some_and(|keys| !keys.contains(&api_versions::END_TXN)) {
        return Err(TransportError::Broker(BrokerError::said(
            "the broker does not support transactions (its ApiVersions answer lists no EndTxn): replay, park and \
             purge write each batch in one Kafka transaction and cannot run here. Nothing was written; stats and \
             show work.",
        )));
    }
    Ok(())
}

/// Create the topic's transactional producer and fence any earlier one (its open
/// transaction is aborted).
async fn transactional_producer(transport: &KafkaTransport, topic: &str) -> Result<FutureProducer, TransportError> {
    let id = format!("courier-dlq.{topic}");
    let producer: FutureProducer = client_config(
        transport.config(),
        &[
            ("transactional.id", &id),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            // A dead-letter record is as large as the workers may write.
            ("message.max.bytes", &transport.config().max_message_bytes.to_string()),
        ],
    )
    .create()
    .map_err(failed)?;
    let init = producer.clone();
    tokio::task::spawn_blocking(move || init.init_transactions(TIMEOUT))
        .await
        .map_err(TransportError::broker)?
        .map_err(|e| failed(e).context("starting transactions"))?;
    Ok(producer)
}

/// One transaction: every output and a ledger entry per record.
fn commit(
    producer: &FutureProducer,
    ledger: &str,
    entries: &[(LogPosition, Option<(String, Message)>)],
) -> Result<(), TransportError> {
    let in_transaction = |e: KafkaError| failed(e).context("transaction");
    producer.begin_transaction().map_err(in_transaction)?;
    let sent = (|| {
        let now = timestamp::format(std::time::SystemTime::now());
        for ((partition, offset), output) in entries {
            let (action, to) = match output {
                Some((destination, message)) => {
                    let mut record = FutureRecord::to(destination)
                        .payload(&message.payload[..])
                        .headers(convert::record_headers(&message.headers));
                    if let Some(key) = &message.key {
                        record = record.key(&key[..]);
                    }
                    producer.send_result(record).map_err(|(e, _)| e)?;
                    ("moved", destination.as_str())
                }
                None => ("purged", ""),
            };
            let key = format!("{partition}:{offset}");
            let entry = serde_json::json!({ "action": action, "to": to, "at": now }).to_string();
            producer.send_result(FutureRecord::to(ledger).key(&key).payload(&entry)).map_err(|(e, _)| e)?;
        }
        producer.commit_transaction(TIMEOUT)
    })();
    if let Err(error) = sent {
        let _ = producer.abort_transaction(TIMEOUT);
        return Err(in_transaction(error));
    }
    Ok(())
}

/// A ledger entry's key, `<partition>:<offset>`.
pub(super) fn parse_key(key: &str) -> Option<(i32, i64)> {
    let (partition, offset) = key.split_once(':')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// Reaching the end of a partition is how [`LogReader`] knows it is done, not an error
/// to log; every other error is logged as usual.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = |code| code == rdkafka::types::RDKafkaErrorCode::PartitionEOF;
        if !matches!(error, KafkaError::PartitionEOF(_)) && !error.rdkafka_error_code().is_some_and(eof) {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// One record read from a log.
struct Entry {
    /// Its partition.
    partition: i32,
    /// Its offset in that partition.
    offset: i64,
    /// The record.
    message: Message,
}

/// Reads every partition of a topic from the beginning to its end, the records written
/// before it opened (by their timestamps: the watermark alone is not reliable on every
/// broker), `read_committed`: aborted transactions are skipped. Outside any consumer group.
struct LogReader {
    consumer: StreamConsumer<QuietEof>,
    /// The topic read.
    topic: String,
    /// When the reader opened (ms since the epoch): later records are not read, so a
    /// replay never meets the dead letters its own replays produce, nor a purge newer ones.
    opened_at: i64,
    /// Partition → offset where it ended when opened; removed once reached.
    ends: HashMap<i32, i64>,
}

impl LogReader {
    /// [`LogReader::open`] off the async runtime (watermark requests block).
    async fn start(transport: &KafkaTransport, topic: &str, partitions: usize) -> Result<Self, TransportError> {
        let (transport, topic) = (transport.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || Self::open(&transport, &topic, partitions))
            .await
            .map_err(TransportError::broker)?
    }

    fn open(transport: &KafkaTransport, topic: &str, partitions: usize) -> Result<Self, TransportError> {
        let group = format!("courier-dlq-reader-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer<QuietEof> = client_config(
            transport.config(),
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                ("isolation.level", "read_committed"),
            ],
        )
        .create_with_context(QuietEof)
        .map_err(failed)?;
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, TIMEOUT)
                .map_err(|e| failed(e).context(format!("{topic}[{partition}]")))?;
            if high > low {
                ends.insert(partition, high);
                assignment.add_partition_offset(topic, partition, Offset::Beginning).map_err(TransportError::broker)?;
            }
        }
        consumer.assign(&assignment).map_err(failed)?;
        let opened_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
        Ok(Self { consumer, topic: topic.to_owned(), opened_at, ends })
    }

    /// Where the consumer will read `partition` next.
    fn position(&self, partition: i32) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        positions.find_partition(&self.topic, partition)?.offset().to_raw()
    }

    /// Whether every partition has been read to its end.
    fn finished(&self) -> bool {
        self.ends.is_empty()
    }

    /// The next record, or `None` once every partition is read to its end.
    async fn next(&mut self) -> Result<Option<Entry>, TransportError> {
        while !self.ends.is_empty() {
            let received = tokio::time::timeout(TIMEOUT, self.consumer.recv()).await.map_err(|_| {
                TransportError::Unavailable(BrokerError::said(format!("no progress reading for {TIMEOUT:?}")))
            })?;
            match received {
                Ok(record) => {
                    let partition = record.partition();
                    if !self.ends.contains_key(&partition) {
                        continue;
                    }
                    if record.timestamp().to_millis().is_some_and(|at| at > self.opened_at) {
                        continue;
                    }
                    return Ok(Some(Entry {
                        partition,
                        offset: record.offset(),
                        message: convert::to_message(&record),
                    }));
                }
                // Neither signal alone marks the end on every broker: an end-of-partition
                // event may come early (tansu sends some mid-log), and a high watermark may
                // be too low (tansu 0.6 reports 1 after a batch of 300). Done at an event
                // that finds the position at or past the watermark seen at opening
                // (transaction markers take offsets no record is read at).
                Err(KafkaError::PartitionEOF(partition)) => {
                    let end = self.ends.get(&partition).copied().unwrap_or(0);
                    if self.position(partition).is_some_and(|position| position >= end) {
                        self.ends.remove(&partition);
                    }
                }
                Err(error) => return Err(failed(error)),
            }
        }
        Ok(None)
    }
}
