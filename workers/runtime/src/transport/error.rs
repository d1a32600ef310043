//! Why a transport operation failed: classified where the broker's answer is read, with
//! the broker client's own error kept as the source, so a caller asks the one question it
//! needs (`is_transient()`) and can still reach what lapin or librdkafka said.

use std::{borrow::Cow, error::Error, fmt, sync::Arc};

/// A broker client's own error, shared so that the errors carrying it stay `Clone`.
pub type Cause = Arc<dyn Error + Send + Sync>;

/// What a broker or its client reported, inside one of our errors: the client's error,
/// our words, or both (`words: error`). The client's error is the
/// [`source`](Error::source), for callers that classify or inspect it; the display quotes
/// it too, as lapin's and rdkafka's own errors quote theirs, since logs print `%error`.
#[derive(Clone)]
pub struct BrokerError {
    /// What the display says.
    text: Text,
    /// The client's own error, when there is one.
    source: Option<Cause>,
}

/// How a [`BrokerError`] reads.
#[derive(Clone, Debug)]
enum Text {
    /// The client's error says it all.
    Client,
    /// What was being done, then the client's error.
    Context(Cow<'static, str>),
    /// Our words alone: nothing of the client's behind them, or they quote it already.
    Words(Cow<'static, str>),
}

impl BrokerError {
    /// The client's error, as it reads.
    pub(crate) fn client(error: impl Error + Send + Sync + 'static) -> Self {
        Self { text: Text::Client, source: Some(Arc::new(error)) }
    }

    /// Our words, with no client error behind them.
    pub fn said(words: impl Into<Cow<'static, str>>) -> Self {
        Self { text: Text::Words(words.into()), source: None }
    }

    /// Keep `error` as the source of words that already say what it said.
    #[must_use]
    pub(crate) fn with_source(mut self, error: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(error));
        self
    }

    /// Say what was being done before what went wrong (`words: …`).
    #[must_use]
    pub fn context(self, words: impl Into<Cow<'static, str>>) -> Self {
        let words = words.into();
        let text = match self.text {
            Text::Client => Text::Context(words),
            Text::Context(inner) => Text::Context(format!("{words}: {inner}").into()),
            Text::Words(inner) => Text::Words(format!("{words}: {inner}").into()),
        };
        Self { text, ..self }
    }

    /// The client's error, if it is an `E`.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.source.as_deref()?.downcast_ref()
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.text, &self.source) {
            (Text::Words(words), _) => f.write_str(words),
            (Text::Context(words), Some(source)) => write!(f, "{words}: {source}"),
            (Text::Context(words), None) => f.write_str(words),
            (Text::Client, Some(source)) => source.fmt(f),
            (Text::Client, None) => f.write_str("the broker client failed"),
        }
    }
}

impl fmt::Debug for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerError").field("text", &self.text).field("source", &self.source).finish()
    }
}

impl Error for BrokerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn Error + 'static))
    }
}

impl From<&'static str> for BrokerError {
    fn from(words: &'static str) -> Self {
        Self::said(words)
    }
}

impl From<String> for BrokerError {
    fn from(words: String) -> Self {
        Self::said(words)
    }
}

/// A transport failure outside publishing, classified by what the broker or its client
/// said (lapin's `can_be_recovered`, librdkafka's fatal errors and error codes).
#[derive(Clone, Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not connect or lost the connection: the same operation may succeed later.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] BrokerError),
    /// The broker has the topology, but with other settings than ours (our own finding,
    /// quoting the broker's explanation where it gave one).
    #[error("topology mismatch: {0}")]
    TopologyMismatch(String),
    /// The broker or its client refused, and will again: a client that cannot be
    /// created, a fatal client error, an operation the broker does not serve.
    #[error(transparent)]
    Broker(BrokerError),
}

impl TransportError {
    /// Whether the same operation may succeed later (the broker is back, the connection
    /// is recovered).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// [`Self::Unavailable`] with the client's error.
    pub(crate) fn unavailable(error: impl Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(BrokerError::client(error))
    }

    /// [`Self::Broker`] with the client's error.
    pub fn broker(error: impl Error + Send + Sync + 'static) -> Self {
        Self::Broker(BrokerError::client(error))
    }

    /// The same error, saying first what was being done.
    #[must_use]
    pub fn context(self, words: impl Into<Cow<'static, str>>) -> Self {
        match self {
            Self::Unavailable(error) => Self::Unavailable(error.context(words)),
            Self::TopologyMismatch(what) => Self::TopologyMismatch(format!("{}: {what}", words.into())),
            Self::Broker(error) => Self::Broker(error.context(words)),
        }
    }
}

/// A publish error met outside publishing (a passive declare asked whether a queue
/// exists): the runtime's own "no answer" stays unavailable, a client failure keeps its
/// class, and a refusal is the broker's.
impl From<PublishError> for TransportError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Transport(error) => error,
            PublishError::Unavailable(words) => Self::Unavailable(BrokerError::said(words)),
            error => Self::broker(error),
        }
    }
}

/// Why a publish was not confirmed, classified where the broker's answer is read so the
/// pipeline can ask the one question it needs: can the same publish succeed later?
///
/// | variant       | a retry may help | the pipeline's next step                          |
/// |---------------|------------------|---------------------------------------------------|
/// | `Unavailable` | yes              | retry in-process, then redeliver (not counted)     |
/// | `Transport`   | yes              | the same                                           |
/// | `Rejected`    | maybe            | redeliver, counted against `--max-redeliveries`    |
/// | `Unroutable`  | no               | the output's documented fallback at once           |
/// | `InvalidName` | no               | the same                                           |
/// | `TooLarge`    | no               | the same                                           |
#[derive(Clone, Debug, thiserror::Error)]
pub enum PublishError {
    /// No queue/topic of that name: the broker returned the message.
    #[error("no queue or topic named `{0}`: the message was returned unroutable")]
    Unroutable(String),
    /// The name cannot be a queue/topic on this broker (length, characters).
    #[error("`{destination}` cannot be a queue or topic name here: {reason}")]
    InvalidName {
        /// The destination, cut to 64 bytes.
        destination: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The message is larger than the broker (or its client) accepts.
    #[error("a message of {size} bytes is too large for `{destination}`: {reason}")]
    TooLarge {
        /// The destination.
        destination: String,
        /// Payload, key and headers, in bytes.
        size: usize,
        /// What the broker or client said (its error code, where it gave one).
        #[source]
        reason: BrokerError,
    },
    /// The broker refused the message (a full queue with `reject-publish`, a topic the
    /// worker may not write): it may pass later, or never.
    #[error("`{destination}` rejected the message: {reason}")]
    Rejected {
        /// The destination that refused.
        destination: String,
        /// What the broker said (its error code, where it gave one).
        #[source]
        reason: BrokerError,
    },
    /// No confirm came and no client error says why: the runtime's own bounds (not
    /// connected, not confirmed in time, dropped by the client).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker client failed before the confirm: the connection dropped, the cluster
    /// is unwell, the producer hit a fatal error. The message is not at fault, whatever
    /// the failure's own class: a fatal one stops the worker ([`super::Transport::failure`]),
    /// and dead-lettering the message meanwhile would be wrong.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl PublishError {
    /// Whether publishing the same message again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Transport(_) | Self::Rejected { .. })
    }

    /// Whether a redelivery caused by this error counts against the message's limit:
    /// a broker outage is nobody's fault and never counts; a refusal does.
    pub(crate) fn counts_against_the_message(&self) -> bool {
        !matches!(self, Self::Unavailable(_) | Self::Transport(_))
    }

    /// A short machine-readable name, for metrics and failure codes.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Unroutable(_) => "unroutable",
            Self::InvalidName { .. } => "invalid_name",
            Self::TooLarge { .. } => "too_large",
            Self::Rejected { .. } => "rejected",
            Self::Unavailable(_) | Self::Transport(_) => "unavailable",
        }
    }

    /// [`Self::InvalidName`] for `destination`, cut to 64 bytes for logs and headers.
    pub(crate) fn invalid_name(destination: &str, reason: &'static str) -> Self {
        let destination = crate::contract::headers::truncate(destination, 64).to_owned();
        Self::InvalidName { destination, reason }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
    }

    #[test]
    fn a_broker_error_reads_as_its_words_and_keeps_the_clients_error() {
        let plain = BrokerError::client(refused());
        assert_eq!(plain.to_string(), "connection refused");
        let during = BrokerError::client(refused()).context("amqp://host:5672");
        assert_eq!(during.to_string(), "amqp://host:5672: connection refused");
        assert_eq!(during.downcast_ref::<io::Error>().map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
        assert_eq!(during.source().map(ToString::to_string).as_deref(), Some("connection refused"));
        let quoted = BrokerError::said("refused (connection refused)").with_source(refused());
        assert_eq!(quoted.to_string(), "refused (connection refused)", "the words say it once");
        assert!(quoted.downcast_ref::<io::Error>().is_some());
        let words = BrokerError::said("queue is full").context("q");
        assert_eq!((words.to_string().as_str(), words.source().is_none()), ("q: queue is full", true));
    }

    /// The texts the docs and tests quote, and the class each error is born with.
    #[test]
    fn transport_errors_keep_their_texts_and_say_whether_to_try_again() {
        let down = TransportError::unavailable(refused()).context("amqp://host");
        assert_eq!(down.to_string(), "broker unavailable: amqp://host: connection refused");
        assert!(down.is_transient());
        let source = down.source().and_then(|e| e.source()).and_then(|e| e.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused), "the client's error is kept");
        let refused = TransportError::Broker(BrokerError::said("the broker does not support transactions"));
        assert_eq!(refused.to_string(), "the broker does not support transactions");
        assert!(!refused.is_transient());
        let mismatch = TransportError::TopologyMismatch("queue q exists with delay 1s to r".into());
        assert_eq!(mismatch.to_string(), "topology mismatch: queue q exists with delay 1s to r");
        assert!(!mismatch.is_transient());
    }

    #[test]
    fn a_client_failure_while_publishing_is_an_outage_whatever_its_own_class() {
        for failure in [TransportError::unavailable(refused()), TransportError::broker(refused())] {
            let error = PublishError::from(failure);
            assert!(error.is_transient() && !error.counts_against_the_message());
            assert_eq!(error.reason(), "unavailable");
        }
        let rejected = PublishError::Rejected { destination: "q".into(), reason: "queue is full".into() };
        assert_eq!(rejected.to_string(), "`q` rejected the message: queue is full");
        assert!(rejected.is_transient() && rejected.counts_against_the_message());
        let down = PublishError::from(TransportError::unavailable(refused()));
        assert_eq!(down.to_string(), "broker unavailable: connection refused");
    }

    #[test]
    fn a_publish_error_outside_publishing_keeps_its_class() {
        assert!(TransportError::from(PublishError::Unavailable("no answer".into())).is_transient());
        let failure = TransportError::from(PublishError::Transport(TransportError::broker(refused())));
        assert!(!failure.is_transient());
        let invalid = TransportError::from(PublishError::invalid_name("a b", "spaces"));
        assert!(!invalid.is_transient());
        assert_eq!(invalid.to_string(), "`a b` cannot be a queue or topic name here: spaces");
    }
}
