//! What the Kafka transport is configured with ([`KafkaConfig`], [`Ordering`]) and how a
//! librdkafka client is configured from it.

use rdkafka::ClientConfig;

/// How messages of one partition may run concurrently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// One message at a time per partition (Kafka's classic guarantee).
    #[default]
    Partition,
    /// Messages with the same key in order; different keys of a partition concurrently.
    Key,
    /// No ordering: every message as soon as there is room.
    None,
}

impl std::str::FromStr for Ordering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "partition" => Ok(Self::Partition),
            "key" => Ok(Self::Key),
            "none" => Ok(Self::None),
            _ => Err(format!("{s:?} is not an ordering: use partition, key or none")),
        }
    }
}

/// Everything the Kafka transport needs to connect.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// Consumer group id (one per worker).
    pub group: String,
    /// Concurrency within a partition.
    pub ordering: Ordering,
    /// Partitions of topics this transport creates.
    pub partitions: i32,
    /// Replication factor of topics this transport creates.
    pub replication: i32,
    /// The producer's `message.max.bytes`: payload, key and headers of the largest
    /// record the worker writes (derived from `--max-payload-bytes`, with room for the
    /// headers of a dead-letter copy).
    pub max_message_bytes: usize,
    /// Bytes each buffer ahead of or behind the worker may hold: librdkafka's fetched
    /// records, the dispatcher's records waiting to be handed out, and the producer's queue
    /// (never below two of the largest records). `--max-in-flight-bytes`.
    pub buffer_bytes: usize,
    /// librdkafka properties passed through (`security.protocol`, `sasl.mechanisms`,
    /// `fetch.wait.max.ms`, …); they override ours.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Room above `--max-payload-bytes` for the key and the headers of a dead-letter copy.
    pub const HEADER_ROOM: usize = 64 * 1024;

    /// The producer limit for a worker that accepts payloads up to `max_payload_bytes`:
    /// never below librdkafka's own default (1,000,000).
    pub fn max_message_bytes_for(max_payload_bytes: usize) -> usize {
        max_payload_bytes.saturating_add(Self::HEADER_ROOM).clamp(1_000_000, 1_000_000_000)
    }

    /// librdkafka's size properties for a buffer of `bytes`, in KiB (1 KiB up to its
    /// maximum, 2,097,151).
    fn kbytes(bytes: usize) -> String {
        (bytes / 1024).clamp(1, 2_097_151).to_string()
    }

    /// The producer's queue: the buffer, or two of the largest records when that is more.
    pub(super) fn producer_queue_kbytes(&self) -> String {
        Self::kbytes(self.buffer_bytes.max(2 * self.max_message_bytes))
    }

    /// What the consumer fetches ahead (`queued.max.messages.kbytes`): the buffer. librdkafka
    /// keeps each fetch (`fetch.max.bytes`, 50 MB) below it and above one record.
    pub(super) fn fetched_kbytes(&self) -> String {
        Self::kbytes(self.buffer_bytes)
    }
}

/// A librdkafka client configuration: the bootstrap servers, `defaults`, then the
/// `--kafka-property` pass-through properties (which win).
pub(crate) fn client_config(config: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap);
    for (key, value) in defaults {
        client.set(*key, *value);
    }
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// librdkafka's longest wait between reconnect attempts (default 10 s): a broker back
/// up is found within about a second.
pub(super) const RECONNECT_BACKOFF_MAX_MS: &str = "1000";
