//! `courier topology lint`: compare what a broker has with what a worker needs, without
//! changing anything. Reports missing queues/topics and, on Kafka, mis-sized ones.

#[cfg(feature = "amqp")]
use courier::transport::amqp::AmqpTransport;
#[cfg(feature = "kafka")]
use courier::transport::kafka::KafkaTransport;
use courier::transport::{Topology, TransportError};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The queue/topic.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Every queue/topic a worker with `topology` uses.
fn names(topology: &Topology) -> Vec<&str> {
    let mut names = vec![topology.queue.as_str()];
    names.extend(topology.retry_tiers.iter().map(|t| t.name.as_str()));
    names.extend([topology.dead_letter.as_str(), &topology.parking, &topology.replies]);
    names
}

/// Kafka: each topic exists; the work topic has the configured partitions; the dead-letter
/// and parking topics have at least as many as the work topic.
#[cfg(feature = "kafka")]
pub async fn kafka(transport: &KafkaTransport, topology: &Topology) -> Result<Vec<Finding>, TransportError> {
    let names = names(topology);
    let counts = transport.partition_counts(&names).await?;
    let mut findings = Vec::new();
    for name in &names {
        if !counts.contains_key(*name) {
            findings.push(Finding { name: (*name).to_owned(), problem: "missing".into() });
        }
    }
    let wanted = usize::try_from(transport.config().partitions).unwrap_or(0);
    if let Some(&source) = counts.get(&topology.queue) {
        if source != wanted {
            findings.push(Finding {
                name: topology.queue.clone(),
                problem: format!("has {source} partitions, --partitions says {wanted}"),
            });
        }
        for name in [&topology.dead_letter, &topology.parking] {
            if let Some(&count) = counts.get(name)
                && count < source
            {
                findings.push(Finding {
                    name: name.clone(),
                    problem: format!("has {count} partitions, fewer than its source {} ({source})", topology.queue),
                });
            }
        }
    }
    Ok(findings)
}

/// RabbitMQ: each queue exists (a passive declare; arguments cannot be read that way —
/// `courier topology declare` reports those mismatches).
#[cfg(feature = "amqp")]
pub async fn amqp(transport: &AmqpTransport, topology: &Topology) -> Result<Vec<Finding>, TransportError> {
    let mut findings = Vec::new();
    for name in names(topology) {
        match transport.queue_exists(name).await {
            Ok(true) => {}
            Ok(false) => findings.push(Finding { name: name.to_owned(), problem: "missing".into() }),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(findings)
}
