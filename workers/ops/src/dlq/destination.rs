//! Where `courier dlq replay` sends a record: the worker's own work queue, or where the
//! operator says with `--to`; never where the record alone says.
//!
//! A record's headers are whatever its producer wrote, and anyone who can publish to the
//! dead-letter queue is a producer, while the replay publishes with the operator's
//! credentials. So the source a record names (`courier-failure-source`, or RabbitMQ's
//! `x-first-death-queue` on a delivery-limit dead letter, which a producer can set too) is
//! only checked, never followed:
//!
//! - `--to` given: the record goes there, whatever it names (the operator chose).
//! - Otherwise it goes to the worker's own work queue when the source it names is that
//!   queue or one of its retry tiers ([`naming::work_queue_of`]). On Kafka the
//!   source is the work topic even for a record that failed on a retry tier (that topic is
//!   in `courier-failure-topic`, which steers nothing).
//! - Otherwise it is not replayed: it names another queue, so it stays where it is and is
//!   reported ([`Elsewhere`]).

use courier::contract::naming;

/// A record that names another queue as its source, replayed only with `--to`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("names `{source_queue}` as its source, not this worker's `{own}`: not replayed without --to")]
pub struct Elsewhere {
    /// The source the record names.
    pub source_queue: String,
    /// The worker's work queue.
    pub own: String,
}

/// The queue a record is replayed to: `to` when the operator gave one, else `own` (the
/// worker's work queue) when the record's `source` is `own` or a retry tier of `own`;
/// else [`Elsewhere`]. (A record naming no source is not a Courier dead letter: replay
/// refuses it before asking.)
pub fn destination<'a>(own: &'a str, to: Option<&'a str>, source: &str) -> Result<&'a str, Elsewhere> {
    match to {
        Some(to) => Ok(to),
        None if naming::work_queue_of(source) == own => Ok(own),
        None => Err(Elsewhere { source_queue: source.to_owned(), own: own.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "greeter.requests";

    #[test]
    fn a_record_of_this_worker_goes_back_to_its_work_queue() {
        assert_eq!(destination(OWN, None, OWN), Ok(OWN));
        assert_eq!(destination(OWN, None, "greeter.requests.retry.30s"), Ok(OWN), "a retry tier");
    }

    #[test]
    fn a_record_naming_another_queue_is_not_replayed() {
        for source in [
            "ledger.requests",
            "ledger.requests.retry.5s",
            "greeter.replies",
            "greeter.requests.dlq",
            "greeter.requests.parking",
            "greeter.requests ",
            "Greeter.requests",
            "greeter.requests.retry.5s.retry.5s",
        ] {
            let refused = destination(OWN, None, source);
            assert_eq!(refused, Err(Elsewhere { source_queue: source.to_owned(), own: OWN.to_owned() }), "{source}");
        }
        let message = destination(OWN, None, "ledger.requests").map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("names `ledger.requests` as its source, not this worker's `greeter.requests`: not replayed without --to"
                .to_owned())
        );
    }

    #[test]
    fn to_is_the_operators_choice_whatever_the_record_names() {
        for source in [OWN, "ledger.requests"] {
            assert_eq!(destination(OWN, Some("ledger.requests"), source), Ok("ledger.requests"));
            assert_eq!(destination(OWN, Some(OWN), source), Ok(OWN));
        }
    }

    /// The rule over every combination of a few name parts: the destination is `--to` or
    /// the worker's queue, never a third queue; without `--to` a record is replayed exactly
    /// when the work queue of its source is the worker's queue. (proptest is not a
    /// dev-dependency of this crate; the space is small enough to walk whole.)
    #[test]
    fn the_destination_is_never_one_the_record_chose() {
        let stems = ["q", "ledger.requests", "greeter.requests", "a.retry.b"];
        let suffixes = ["", ".retry.5s", ".retry.", ".dlq", ".parking", ".retry.1s.retry.2s"];
        let names: Vec<String> =
            stems.iter().flat_map(|stem| suffixes.iter().map(move |suffix| format!("{stem}{suffix}"))).collect();
        let mut cases = 0;
        for own in &names {
            for to in std::iter::once(None).chain(names.iter().map(|n| Some(n.as_str()))) {
                for source in &names {
                    cases += 1;
                    match (destination(own, to, source), to) {
                        (Ok(to_queue), Some(to)) => assert_eq!(to_queue, to),
                        (Err(e), Some(to)) => panic!("--to {to} refused: {e}"),
                        (Ok(queue), None) => {
                            assert_eq!(queue, own);
                            assert_eq!(naming::work_queue_of(source), own, "{source} → {own}");
                        }
                        (Err(e), None) => {
                            assert_ne!(naming::work_queue_of(source), own);
                            assert_eq!((e.source_queue.as_str(), e.own.as_str()), (source.as_str(), own.as_str()));
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 24 * 25 * 24);
    }
}
