//! At start-up, the topics a worker writes to are checked against the largest record it may
//! write (the producer's `message.max.bytes`, from `--max-payload-bytes`): a topic whose
//! own `max.message.bytes` is lower refuses some outputs the worker would otherwise send
//! whole. That is not an error (each refusal has its documented fallback), but it should
//! not be a surprise: the worker says at start-up which topic, what happens there, and
//! what to change. The rule is pure ([`warnings`]); [`check`] asks the broker.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use tracing::{debug, warn};

use super::{KafkaConfig, api_versions, failed};
use crate::transport::{Topology, TransportError};

/// How long the broker may take to answer; the check is skipped after it.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What happens to an output too large for the topic, by the topic's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Replies,
    Retry,
    DeadLetter,
    Parking,
}

impl Role {
    fn consequence(self) -> &'static str {
        match self {
            Self::Replies => "larger replies are dead-lettered as reply_too_large",
            Self::Retry => "larger requests that fail transiently are dead-lettered instead of retried",
            Self::DeadLetter | Self::Parking => "copies of larger requests are written without their payload",
        }
    }
}

/// One warning per topic whose `max.message.bytes` (when known) is below `ours`.
pub(super) fn warnings(ours: usize, topics: &[(&str, Role, Option<usize>)]) -> Vec<String> {
    topics
        .iter()
        .filter_map(|&(topic, role, limit)| {
            let limit = limit.filter(|limit| *limit < ours)?;
            Some(format!(
                "topic {topic} accepts records up to {limit} bytes (its max.message.bytes), fewer than this \
                 worker may write ({ours}, from --max-payload-bytes): {}. Raise the topic's max.message.bytes or \
                 lower --max-payload-bytes.",
                role.consequence()
            ))
        })
        .collect()
}

/// The topics of `topology` the worker writes to, with their roles.
fn written(topology: &Topology) -> Vec<(&str, Role)> {
    let mut topics = vec![
        (topology.replies.as_str(), Role::Replies),
        (&topology.dead_letter, Role::DeadLetter),
        (&topology.parking, Role::Parking),
    ];
    topics.extend(topology.retry_tiers.iter().map(|tier| (tier.name.as_str(), Role::Retry)));
    topics
}

/// Ask the broker for the `max.message.bytes` of every topic `topology` writes to, and
/// log a warning per topic below ours. A broker that cannot say (no DescribeConfigs, as
/// librdkafka's mock cluster) or does not answer is noted at debug level.
pub(super) async fn check(config: &KafkaConfig, topology: &Topology) {
    let bootstrap = config.bootstrap.clone();
    let apis = tokio::task::spawn_blocking(move || api_versions::probe(&bootstrap, TIMEOUT)).await.ok().flatten();
    if apis.is_some_and(|keys| !keys.contains(&api_versions::DESCRIBE_CONFIGS)) {
        debug!("The broker does not serve DescribeConfigs: topics' max.message.bytes not checked.");
        return;
    }
    let topics = written(topology);
    let limits = match limits(config, &topics).await {
        Ok(limits) => limits,
        Err(error) => {
            debug!(%error, "Could not read the topics' max.message.bytes; not checked.");
            return;
        }
    };
    let described: Vec<_> = topics.iter().zip(limits).map(|(&(topic, role), limit)| (topic, role, limit)).collect();
    for warning in warnings(config.max_message_bytes, &described) {
        warn!("{warning}");
    }
}

/// Each topic's `max.message.bytes`, in order; `None` where the broker did not say.
async fn limits(config: &KafkaConfig, topics: &[(&str, Role)]) -> Result<Vec<Option<usize>>, TransportError> {
    let admin: AdminClient<DefaultClientContext> = super::client_config(config, &[]).create().map_err(failed)?;
    let resources: Vec<_> = topics.iter().map(|(topic, _)| ResourceSpecifier::Topic(topic)).collect();
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described =
        tokio::time::timeout(TIMEOUT + Duration::from_secs(1), admin.describe_configs(&resources, &options))
            .await
            .map_err(|_| TransportError::Unavailable(format!("no answer within {TIMEOUT:?}").into()))?
            .map_err(failed)?;
    Ok(described
        .into_iter()
        .map(|resource| {
            let resource = resource.ok()?;
            resource.get("max.message.bytes")?.value.as_deref()?.parse().ok()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_about_each_topic_below_ours_and_says_what_happens_there() {
        let topics = [
            ("greeter.replies", Role::Replies, Some(500_000)),
            ("greeter.requests.retry.5s", Role::Retry, Some(2_000_000)),
            ("greeter.requests.dlq", Role::DeadLetter, Some(1_000_012)),
            ("greeter.requests.parking", Role::Parking, None),
        ];
        let warnings = warnings(1_114_112, &topics);
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(warnings[0].starts_with("topic greeter.replies accepts records up to 500000 bytes"));
        assert!(warnings[0].contains("reply_too_large"));
        assert!(warnings[1].starts_with("topic greeter.requests.dlq"));
        assert!(warnings[1].contains("without their payload"));
    }

    #[test]
    fn a_topic_as_large_as_ours_is_fine() {
        assert!(warnings(1_000_000, &[("t", Role::Replies, Some(1_000_000))]).is_empty());
    }

    #[test]
    fn every_written_topic_is_checked_and_the_work_topic_is_not() {
        let topology = Topology {
            queue: "w.requests".into(),
            retry_tiers: vec![crate::transport::RetryTier { name: "w.retry".into(), delay: Duration::from_secs(5) }],
            dead_letter: "w.dlq".into(),
            parking: "w.parking".into(),
            replies: "w.replies".into(),
            quorum: false,
        };
        let names: Vec<&str> = written(&topology).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["w.replies", "w.dlq", "w.parking", "w.retry"]);
    }
}
