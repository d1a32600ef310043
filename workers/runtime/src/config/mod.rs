//! Worker configuration: one clap struct (every flag also an environment variable),
//! validated at start-up into [`Settings`].
//!
//! By role: the flags and their clap attributes in `args`, the broker a `--broker` URL
//! names in `broker`, the validation of a worker's flags in `validate`, what it yields in
//! `settings`, the reply-to patterns in `glob`, and the error every step returns in `error`;
//! the defaults and the naming rule that several of them share are here.

mod args;
mod broker;
mod error;
mod glob;
mod settings;
mod validate;

pub(crate) use args::{BrokerArgs, ObservabilityArgs, ProcessingArgs, QueueArgs};
pub use args::{ClientArgs, WorkerArgs};
pub(crate) use broker::ClientLimits;
pub use error::ConfigError;
use error::invalid;
pub use settings::{BatchSettings, InboxSettings, Settings};

/// The default of `--max-payload-bytes`.
pub(crate) const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// The default of `--max-in-flight-bytes`.
pub(crate) const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Names safe on both brokers (Kafka topics allow only these characters).
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The settings of worker `greeter` from `args`, shared by the tests of each step.
#[cfg(all(test, feature = "amqp", feature = "kafka"))]
fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
    use clap::Parser;

    let mut argv = vec!["greeter"];
    argv.extend_from_slice(args);
    WorkerArgs::try_parse_from(argv).expect("flags parse").settings("greeter")
}
