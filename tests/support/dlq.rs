//! The dead-letter drills, written once and run on each broker: the greeter and the
//! `courier` CLI as real processes, and a raw client to publish and read queues.

use std::{collections::HashMap, time::Duration};

use courier::{
    Message,
    contract::{failure::FailureKind, headers as h},
};

use crate::process::Process;

/// How long a drill waits for progress.
pub const PATIENCE: Duration = Duration::from_secs(45);

/// One broker, as the drills need it. Queues are named after `queue`, the work queue.
pub trait Drill {
    /// Flags that point the greeter and the CLI at this broker and work queue.
    fn flags(&self) -> Vec<String>;
    /// The work queue.
    fn queue(&self) -> &str;
    /// The default reply queue.
    fn replies(&self) -> &str;
    /// Publish messages to a queue/topic, confirmed.
    fn publish(&mut self, queue: &str, messages: Vec<Message>) -> impl Future<Output = ()>;
    /// Messages that arrived on `queue` since the last call (RabbitMQ: consumed and acked;
    /// Kafka: read from the log).
    fn take(&mut self, queue: &str) -> impl Future<Output = Vec<Message>>;
}

/// Run `courier <args> <drill flags>`; returns (exit code, stdout, stderr).
pub fn courier(drill: &impl Drill, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(["--worker", "greeter"].map(String::from));
    all.extend(drill.flags());
    crate::process::courier(&all)
}

/// `courier topology declare` of the drill's greeter, which runs without retry tiers.
pub fn declare_topology(drill: &impl Drill) {
    courier_ok(drill, &["topology", "declare", "--retry-delays="]);
}

/// `courier <args>`, which must exit 0; returns its stdout.
pub fn courier_ok(drill: &impl Drill, args: &[&str]) -> String {
    let (code, stdout, stderr) = courier(drill, args);
    assert_eq!(code, 0, "courier {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Records in the dead-letter (or parking) queue, by `courier dlq stats --json`.
pub fn dlq_total(drill: &impl Drill, parking: bool) -> u64 {
    let mut args = vec!["dlq", "stats", "--json"];
    if parking {
        args.push("--parking");
    }
    let stats: serde_json::Value = serde_json::from_str(&courier_ok(drill, &args)).expect("stats JSON");
    stats["total"].as_u64().expect("total")
}

/// Correlation ids of the records `courier dlq show --json` prints, in its order.
pub fn shown_ids(drill: &impl Drill, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["dlq", "show", "--json"];
    args.extend_from_slice(extra);
    courier_ok(drill, &args)
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record per line");
            record["headers"][h::CORRELATION_ID].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// Wait until the dead-letter queue holds `n` records.
pub fn wait_for_dead_letters(drill: &impl Drill, n: u64, parking: bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let total = dlq_total(drill, parking);
        if total == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{total} dead letters, expected {n}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A greeter on the drill's broker; `down` makes its dependency fail (transient errors),
/// and every request then ends in the dead-letter queue (its circuit breaker is off, which
/// would hold them in the queue instead).
pub fn greeter(drill: &impl Drill, label: &str, down: bool, extra: &[&str]) -> Process {
    let mut args: Vec<String> = drill.flags();
    args.extend(
        ["--instance", label, "--retry-attempts", "1", "--retry-delays=", "--shutdown-grace", "2s"].map(String::from),
    );
    if down {
        args.extend(["--breaker", "off"].map(String::from));
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: &[(&str, &str)] = if down { &[("GREETER_DEPENDENCY_DOWN", "1")] } else { &[] };
    let mut process = Process::start("greeter", label, &args, env);
    process.wait_for_log("Consuming.", PATIENCE);
    process
}

/// A greeter request with correlation id `id`.
pub fn request(id: &str, reply_to: &str) -> Message {
    let headers = [(h::CORRELATION_ID, id), (h::REPLY_TO, reply_to), (h::CONTENT_TYPE, h::JSON)];
    Message {
        payload: format!(r#"{{"message":"{id}"}}"#).into(),
        headers: headers.into_iter().map(|(k, v)| (courier::contract::headers::name(k), v.to_owned())).collect(),
        key: Some(id.to_owned().into()),
    }
}

/// A dead-letter record as a worker writes it: `request(id)` plus failure headers.
pub fn dead_letter(id: &str, source: &str, reply_to: &str, kind: FailureKind) -> Message {
    let mut record = request(id, reply_to);
    let now = courier::contract::timestamp::format(std::time::SystemTime::now());
    let fingerprint = courier::contract::failure::fingerprint(kind, "greeter", "drill");
    for (name, value) in [
        (h::FAILURE_KIND, kind.as_str()),
        (h::FAILURE_CODE, "drill"),
        (h::FAILURE_MESSAGE, "written by the drill"),
        (h::FAILURE_FINGERPRINT, &fingerprint),
        (h::FAILURE_SOURCE, source),
        (h::FAILURE_WORKER, "greeter"),
        (h::FAILURE_ATTEMPTS, "3"),
        (h::FAILURE_FIRST_AT, &now),
        (h::FAILURE_LAST_AT, &now),
        (h::ATTEMPT, "2"),
    ] {
        record.headers.insert(courier::contract::headers::name(name), value.to_owned());
    }
    record
}

/// Read `queue` until `done` holds for what arrived, or panic after [`PATIENCE`].
pub async fn collect(drill: &mut impl Drill, queue: &str, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut all = Vec::new();
    while !done(&all) {
        assert!(tokio::time::Instant::now() < deadline, "{} messages on {queue}, not done yet", all.len());
        let new = drill.take(queue).await;
        if new.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        all.extend(new);
    }
    all
}

/// Count per correlation id.
pub fn by_id(messages: &[Message]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in messages {
        *counts.entry(message.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default()).or_default() += 1;
    }
    counts
}

/// `n` dead-letter records published straight to the dead-letter queue: `stats` and `show`
/// count every one (a reader that stopped at a partition's first end-of-partition event
/// saw 24 of 25 on tansu), and reading changes nothing.
pub async fn stats_and_show_count_every_record(drill: &mut impl Drill, n: usize) {
    declare_topology(drill);
    let dlq = format!("{}.dlq", drill.queue());
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let records: Vec<Message> =
        (0..n).map(|i| dead_letter(&format!("count-{i}"), &queue, &replies, FailureKind::Permanent)).collect();
    drill.publish(&dlq, records).await;
    for _ in 0..2 {
        assert_eq!(dlq_total(drill, false), n as u64, "stats");
        assert_eq!(shown_ids(drill, &[]).len(), n, "show");
    }
}

/// Issue 30: records published straight into the dead-letter queue that name `elsewhere` as
/// their source (a queue/topic that exists, so a replay there would be delivered): one with
/// `courier-failure-source`, one as a RabbitMQ delivery-limit dead letter
/// (`x-first-death-queue`), both headers any producer can set. `courier dlq replay` (and
/// its dry run) replays a genuine record of the same queue to the work queue, skips and
/// reports the two, and leaves them in the dead-letter queue, in order; nothing reaches
/// `elsewhere`. Only `--to <elsewhere>`, the operator's explicit choice, sends them there.
pub async fn records_naming_another_source_stay(drill: &mut impl Drill, elsewhere: &str) {
    declare_topology(drill);
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let forged = dead_letter("forged", elsewhere, &replies, FailureKind::Transient);
    let mut forged_limit = request("forged-limit", &replies);
    for (name, value) in [(h::X_FIRST_DEATH_QUEUE, elsewhere), (h::X_FIRST_DEATH_REASON, "delivery_limit")] {
        forged_limit.headers.insert(h::name(name), value.to_owned());
    }
    let genuine = dead_letter("genuine", &queue, &replies, FailureKind::Transient);
    drill.publish(&format!("{queue}.dlq"), vec![forged, forged_limit, genuine]).await;
    assert!(drill.take(elsewhere).await.is_empty(), "{elsewhere} starts empty");
    let refusal = format!("names `{elsewhere}` as its source, not this worker's `{queue}`: not replayed without --to");

    let (code, dry, err) = courier(drill, &["dlq", "replay", "--dry-run"]);
    println!("dry run, exit {code}:\n{dry}{err}");
    assert_eq!(code, 2, "records left in place: exit 2\n{dry}\n{err}");
    assert!(dry.contains(&format!("would replay to {queue}:")), "{dry}");
    assert!(!dry.contains(&format!("would replay to {elsewhere}")), "{dry}");
    assert_eq!(dry.matches("would skip ").count(), 2, "{dry}");
    assert_eq!(dry.matches(&refusal).count(), 2, "{dry}");
    assert!(
        dry.contains("3 read: would be 1 replayed") && dry.contains("2 skipped (another queue's records)"),
        "{dry}"
    );
    assert_eq!(dlq_total(drill, false), 3, "a dry run changes nothing");

    let (code, out, err) = courier(drill, &["dlq", "replay"]);
    println!("replay, exit {code}:\n{out}{err}");
    assert_eq!(code, 2, "records left in place: exit 2\n{out}\n{err}");
    assert!(out.contains("3 read: 1 replayed") && out.contains("2 skipped (another queue's records)"), "{out}");
    assert_eq!(err.matches(&refusal).count(), 2, "each named on stderr: {err}");
    let mut replayed = collect(drill, &queue, |all| !all.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    replayed.extend(drill.take(&queue).await);
    assert_eq!(by_id(&replayed), HashMap::from([("genuine".to_owned(), 1)]), "only the genuine record is replayed");
    assert!(drill.take(elsewhere).await.is_empty(), "nothing reached {elsewhere}");
    assert_eq!(shown_ids(drill, &[]), ["forged", "forged-limit"], "the two stay in the dead-letter queue, in order");

    let out = courier_ok(drill, &["dlq", "replay", "--to", elsewhere]);
    println!("replay --to {elsewhere}:\n{out}");
    assert!(out.contains("2 read: 2 replayed"), "{out}");
    let there = collect(drill, elsewhere, |all| all.len() >= 2).await;
    assert_eq!(by_id(&there), HashMap::from([("forged".to_owned(), 1), ("forged-limit".to_owned(), 1)]));
    assert_eq!(dlq_total(drill, false), 0);
}

/// The `dlq` drills for one broker: `dlq_drills!(<expression giving a fresh Drill>)`.
#[macro_export]
macro_rules! dlq_drills {
    ($drill:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stats_and_show_count_every_record_of_300() {
            let mut drill = $drill;
            courier_tests::dlq::stats_and_show_count_every_record(&mut drill, 300).await;
        }

        /// A worker whose dependency fails dead-letters every request; once fixed, a
        /// replay gets each one answered and empties the dead-letter queue. Stats and a
        /// dry run change nothing.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn replay_after_the_dependency_is_fixed_answers_every_request() {
            use courier_tests::dlq::*;
            let mut drill = $drill;
            let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
            let mut broken = greeter(&drill, "dlq-broken", true, &[]);
            let ids: Vec<String> = (0..20).map(|i| format!("fix-{i}")).collect();
            drill.publish(&queue, ids.iter().map(|id| request(id, &replies)).collect()).await;
            wait_for_dead_letters(&drill, 20, false);
            broken.terminate();

            let stats = courier_ok(&drill, &["dlq", "stats"]);
            assert!(stats.contains("20 record(s) in 1 group(s)") && stats.contains("transient"), "{stats}");
            let dry = courier_ok(&drill, &["dlq", "replay", "--dry-run"]);
            assert!(dry.contains("20 read: would be 20 replayed"), "{dry}");
            assert_eq!(dlq_total(&drill, false), 20, "a dry run changes nothing");

            let _fixed = greeter(&drill, "dlq-fixed", false, &[]);
            let replayed = courier_ok(&drill, &["dlq", "replay"]);
            assert!(replayed.contains("20 read: 20 replayed"), "{replayed}");
            let ok = |m: &courier::Message| {
                m.headers.get(courier::contract::headers::STATUS).map(String::as_str) == Some("ok")
            };
            let answered = collect(&mut drill, &replies, |all| {
                by_id(&all.iter().filter(|m| ok(m)).cloned().collect::<Vec<_>>()).len() == 20
            })
            .await;
            let answered: Vec<courier::Message> = answered.into_iter().filter(|m| ok(m)).collect();
            assert!(ids.iter().all(|id| by_id(&answered).contains_key(id)));
            assert_eq!(dlq_total(&drill, false), 0);
        }

        /// A record naming another queue as its source (here the reply queue, which every
        /// drill has) is not replayed there without `--to`.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn records_naming_another_source_stay_in_the_dead_letter_queue() {
            let mut drill = $drill;
            let elsewhere = courier_tests::dlq::Drill::replies(&drill).to_owned();
            courier_tests::dlq::records_naming_another_source_stay(&mut drill, &elsewhere).await;
        }

        /// Filters, limits, dry runs, purge and park touch exactly the matching records
        /// and leave the rest in their order; reading removes and reorders nothing.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn filters_touch_exactly_the_matching_records() {
            use courier::contract::{failure::FailureKind::*, headers as h};
            use courier_tests::dlq::*;
            let mut drill = $drill;
            let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
            courier_tests::dlq::declare_topology(&drill);
            let kinds = [Transient, Schema, Transient, Decode, Transient, Schema];
            let records =
                kinds.iter().enumerate().map(|(i, kind)| dead_letter(&format!("d{i}"), &queue, &replies, *kind));
            drill.publish(&format!("{queue}.dlq"), records.collect()).await;

            let before = shown_ids(&drill, &[]);
            assert_eq!(before.len(), 6);
            courier_ok(&drill, &["dlq", "stats"]);
            assert_eq!(shown_ids(&drill, &[]), before, "reading changed the queue");

            let dry = courier_ok(&drill, &["dlq", "replay", "--dry-run", "--kind", "schema"]);
            assert!(dry.contains("would be 2 replayed"), "{dry}");
            let out = courier_ok(&drill, &["dlq", "replay", "--kind", "transient", "--limit", "2"]);
            assert!(out.contains("2 replayed") && out.contains("4 skipped"), "{out}");
            let replayed = collect(&mut drill, &queue, |all| all.len() >= 2).await;
            let mut replayed_ids: Vec<&str> = replayed.iter().map(|m| m.headers[h::CORRELATION_ID].as_str()).collect();
            replayed_ids.sort_unstable();
            let first_two: Vec<&str> = before
                .iter()
                .filter(|id| ["d0", "d2", "d4"].contains(&id.as_str()))
                .take(2)
                .map(String::as_str)
                .collect();
            let mut expected = first_two.clone();
            expected.sort_unstable();
            assert_eq!(replayed_ids, expected);
            for message in &replayed {
                assert_eq!(message.headers.get(h::REPLAY_COUNT).map(String::as_str), Some("1"));
                assert!(!message.headers.contains_key(h::FAILURE_KIND) && !message.headers.contains_key(h::ATTEMPT));
            }
            let left: Vec<String> = before.iter().filter(|id| !first_two.contains(&id.as_str())).cloned().collect();
            assert_eq!(shown_ids(&drill, &[]), left, "the rest stays, in order");

            let purged = courier_ok(&drill, &["dlq", "purge", "--kind", "decode", "--yes"]);
            assert!(purged.contains("1 purged"), "{purged}");
            let parked = courier_ok(&drill, &["dlq", "park", "--kind", "schema"]);
            assert!(parked.contains("2 parked"), "{parked}");
            let mut parked_ids = shown_ids(&drill, &["--parking"]);
            parked_ids.sort();
            assert_eq!(parked_ids, ["d1", "d5"]);
            assert_eq!(shown_ids(&drill, &[]).len(), 1);
            assert_eq!(drill.take(&queue).await.len(), 0, "nothing else was replayed");
        }

        /// kill -9 of a replay mid-way, then a rerun: each record is replayed exactly once.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_killed_replay_rerun_replays_each_record_exactly_once() {
            use courier_tests::dlq::*;
            const RECORDS: usize = 5_000;
            let mut drill = $drill;
            let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
            courier_tests::dlq::declare_topology(&drill);
            let records = (0..RECORDS).map(|i| {
                dead_letter(&format!("k{i}"), &queue, &replies, courier::contract::failure::FailureKind::Transient)
            });
            drill.publish(&format!("{queue}.dlq"), records.collect()).await;

            let mut args = vec![
                "dlq".to_owned(),
                "replay".into(),
                "--worker".into(),
                "greeter".into(),
                "--rate".into(),
                "500".into(),
            ];
            args.extend(drill.flags());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert!(drill.take(&queue).await.is_empty(), "the work queue starts empty");
            let mut replay = courier_tests::process::Process::start("courier", "dlq-replay-killed", &args, &[]);
            let before_kill = collect(&mut drill, &queue, |all| all.len() >= 500).await;
            assert!(replay.running(), "the replay finished before the kill: slow the rate down");
            replay.kill9();
            let summary = courier_ok(&drill, &["dlq", "replay"]);
            let rest = collect(&mut drill, &queue, |all| before_kill.len() + all.len() >= RECORDS).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let late = drill.take(&queue).await;
            let all: Vec<courier::Message> = before_kill.into_iter().chain(rest).chain(late).collect();
            let counts = by_id(&all);
            let twice = counts.values().filter(|n| **n > 1).count();
            println!("replayed {} records ({} distinct, {twice} twice); rerun: {summary}", all.len(), counts.len());
            assert_eq!((counts.len(), all.len()), (RECORDS, RECORDS), "every record replayed exactly once");
            assert_eq!(dlq_total(&drill, false), 0);
        }

        /// A request that keeps failing is replayed `--max-replays` times, then parked.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_record_that_keeps_failing_is_parked_by_the_loop_guard() {
            use courier_tests::dlq::*;
            let mut drill = $drill;
            let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
            let _broken = greeter(&drill, "dlq-loop", true, &[]);
            drill.publish(&queue, vec![request("loop-1", &replies)]).await;
            for round in 1..=2 {
                wait_for_dead_letters(&drill, 1, false);
                let out = courier_ok(&drill, &["dlq", "replay", "--max-replays", "2"]);
                assert!(out.contains("1 replayed"), "round {round}: {out}");
            }
            wait_for_dead_letters(&drill, 1, false);
            let out = courier_ok(&drill, &["dlq", "replay", "--max-replays", "2"]);
            assert!(out.contains("0 replayed, 1 parked"), "{out}");
            assert_eq!(dlq_total(&drill, false), 0);
            let parked = courier_ok(&drill, &["dlq", "show", "--parking", "--json"]);
            let record: serde_json::Value = serde_json::from_str(parked.trim()).expect("one parked record");
            assert_eq!(record["headers"][courier::contract::headers::REPLAY_COUNT], "2");
            assert_eq!(record["headers"][courier::contract::headers::CORRELATION_ID], "loop-1");
        }
    };
}
