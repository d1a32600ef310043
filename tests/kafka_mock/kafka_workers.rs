//! The greeter binary on Kafka (the mock cluster in a process of its own): a consumer
//! group losing a member to kill -9 and gaining one mid-load, a member whose handlers
//! are all stuck, produce errors injected by the broker, a slow broker's confirms, and
//! records larger than the producer may write. Nothing may be lost. And a Python
//! producer speaking protobuf, and the inbox on Kafka.

use std::time::Duration;

use courier_tests::{
    kafka::{KafkaClient, MockKafkaProcess},
    process::Process,
    replies::Replies,
};

pub(super) const PATIENCE: Duration = Duration::from_secs(45);
pub(super) const PARTITIONS: i32 = 6;

pub(super) struct Names {
    pub(super) queue: String,
    pub(super) replies: String,
    pub(super) group: String,
}

pub(super) fn names(test: &str) -> Names {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    Names {
        queue: format!("{test}-{id}.requests"),
        replies: format!("{test}-{id}.replies"),
        group: format!("{test}-{id}"),
    }
}

pub(super) fn topics(names: &Names) -> Vec<(String, i32)> {
    let q = &names.queue;
    [q.clone(), names.replies.clone(), format!("{q}.dlq"), format!("{q}.parking"), format!("{q}.retry.1s")]
        .into_iter()
        .map(|t| (t, PARTITIONS))
        .collect()
}

fn start_cluster(names: &Names) -> MockKafkaProcess {
    start_cluster_with_tiers(names, &[])
}

/// [`start_cluster`] with retry tiers of these delays besides the 1 s one.
pub(super) fn start_cluster_with_tiers(names: &Names, delays: &[&str]) -> MockKafkaProcess {
    let mut topics = topics(names);
    topics.extend(delays.iter().map(|delay| (format!("{}.retry.{delay}", names.queue), PARTITIONS)));
    let specs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    MockKafkaProcess::start(&specs)
}

fn greeter(label: &str, cluster: &MockKafkaProcess, names: &Names, env: &[(&str, &str)]) -> Process {
    greeter_with(label, cluster, names, env, "64", &[])
}

/// [`greeter`] with this concurrency and more flags.
pub(super) fn greeter_with(
    label: &str,
    cluster: &MockKafkaProcess,
    names: &Names,
    env: &[(&str, &str)],
    concurrency: &str,
    extra: &[&str],
) -> Process {
    let broker = format!("kafka://{}", cluster.bootstrap);
    let partitions = PARTITIONS.to_string();
    let args = [
        "--broker",
        &broker,
        "--queue",
        &names.queue,
        "--replies",
        &names.replies,
        "--group",
        &names.group,
        "--instance",
        label,
        "--retry-delays",
        "1s",
        "--partitions",
        &partitions,
        "--concurrency",
        concurrency,
        "--kafka-property",
        "fetch.wait.max.ms=10",
        // These tests kill members: the group notices within 10 s (default 30 s).
        "--kafka-property",
        "session.timeout.ms=10000",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let mut process = Process::start("greeter", label, &args, env);
    process.wait_for_log("Partitions assigned.", PATIENCE);
    process
}

/// The inbox is broker-independent: on Kafka too, a request sent twice with one
/// `courier-message-id` runs the handler once and is answered twice, the second time
/// from the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_id_is_answered_from_the_inbox() {
    let names = names("inbox");
    let cluster = start_cluster(&names);
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let inbox = courier_tests::postgres::url();
    let mut worker = greeter_with("inbox", &cluster, &names, &[], "64", &["--inbox", &inbox, "--http-addr", &addr]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let id = format!("{}-once", names.queue);
    for correlation in ["first", "again"] {
        let headers: [(&str, &[u8]); 3] = [
            ("courier-message-id", id.as_bytes()),
            ("courier-correlation-id", correlation.as_bytes()),
            ("courier-reply-to", names.replies.as_bytes()),
        ];
        client.publish_raw(&names.queue, id.as_bytes(), br#"{"message":"Ada"}"#, &headers).await;
    }
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, 2, &mut seen, PATIENCE, |_| false).await;
    courier_tests::postgres::assert_answered_once_then_from_the_inbox(port, &seen, || worker.tail()).await;
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
}

/// A Python producer (confluent-kafka) with code generated from `greeter.proto` gets its
/// replies in protobuf, and its refusals in the protobuf error envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_protobuf_producer_is_answered_in_protobuf() {
    let names = names("protobuf");
    let cluster = start_cluster(&names);
    let mut worker = greeter("protobuf", &cluster, &names, &[]);
    let args = ["kafka", cluster.bootstrap.as_str(), &names.queue, &names.replies];
    courier_tests::python::protobuf_client_is_answered(&args, || worker.tail());
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_killed_and_another_joining_lose_nothing() {
    let names = names("group");
    let cluster = start_cluster(&names);
    let mut a = greeter("group-a", &cluster, &names, &[]);
    let mut b = greeter("group-b", &cluster, &names, &[]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let mut ids = client.publish_greetings(&names.queue, &names.replies, "g1", 5_000).await;
    let mut seen = Replies::default();
    let started = std::time::Instant::now();
    client
        .collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 2_000)
        .await;
    assert!(seen.by_id.len() >= 2_000, "progress before the kill:\n{}\n{}", a.tail(), b.tail());
    let rate = seen.by_id.len() as f64 / started.elapsed().as_secs_f64();
    a.kill9();
    // A new member joins while the group recovers from the lost one; then more load.
    let mut c = greeter("group-c", &cluster, &names, &[]);
    ids.extend(client.publish_greetings(&names.queue, &names.replies, "g2", 5_000).await);
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let missing = seen.missing(&ids);
    // What a crash or a rebalance repeats: the outputs in flight of the killed member and
    // of the one giving partitions up (64 handlers + 640 awaiting confirms each), and what
    // was answered since the last commit (every 100 ms; 300 ms allows for its round trip).
    let bound = 2.0 * 704.0 + rate * 0.3;
    println!(
        "kafka group: {} of {} answered, {} lost, {} duplicates (bound {bound:.0} at {rate:.0} replies/s); by instance {:?}",
        seen.by_id.len(),
        ids.len(),
        missing.len(),
        seen.duplicates(),
        seen.by_instance
    );
    assert!(seen.duplicates() as f64 <= bound, "{} duplicates, bound {bound:.0}", seen.duplicates());
    assert!(
        missing.is_empty(),
        "lost {} requests, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        b.tail()
    );
    assert!(seen.by_instance.contains_key("group-c"), "the joining member took partitions over");
    assert!(b.terminate() && c.terminate(), "SIGTERM ends the workers cleanly");
}

/// A member whose handlers never finish fills its buffer and stops reading records. It
/// must still serve the group's rebalances (librdkafka serves them only while the
/// consumer is read), so a member that joins gets partitions and answers their requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_stuck_handlers_still_gives_partitions_up() {
    let names = names("stuck");
    let cluster = start_cluster(&names);
    let mut stuck = greeter("stuck-a", &cluster, &names, &[("GREETER_LATENCY_MS", "600000")]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    // More than the stuck member's buffer (10,000 records) and in-flight handlers hold.
    let ids = client.publish_greetings(&names.queue, &names.replies, "s", 12_000).await;
    stuck.wait_for_log("pausing every partition, reading on", PATIENCE);
    let mut healthy = greeter("stuck-b", &cluster, &names, &[]);
    let mut seen = Replies::default();
    let enough = |r: &Replies| r.by_instance.get("stuck-b").is_some_and(|n| *n >= 1_000);
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, enough).await;
    assert!(enough(&seen), "the joining member answered {:?}\n{}", seen.by_instance, stuck.tail());
    // It took part in the rebalance: its partitions were revoked, not lost. A member that
    // fails to rejoin is dropped from the group after a timeout (on a real Kafka cluster,
    // `max.poll.interval.ms`, and every member waits for it meanwhile); its partitions
    // are then "lost".
    stuck.wait_for_log("Partitions revoked.", Duration::from_secs(5));
    stuck.kill9();
    assert!(healthy.terminate());
}

/// A handler slot is freed once its delivery's output is in the producer's hands, not when
/// the broker confirms it: with every answer of the broker delayed by 300 ms, a worker at
/// `--concurrency 4` has many more deliveries in flight (outputs awaiting their confirm)
/// instead of running 4 per round trip. Nothing is committed before its confirm still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_do_not_hold_handler_slots() {
    let names = names("confirms");
    let mut cluster = start_cluster(&names);
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = greeter_with("confirms", &cluster, &names, &[], "4", &["--http-addr", &addr]);
    cluster.command("rtt 1 300");
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "c", 400).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut most = 0.0_f64;
    while most <= 4.0 && std::time::Instant::now() < deadline {
        let (_, text) = courier_tests::http::get(port, "/metrics").await;
        most = most.max(courier_tests::http::metric(&text, r#"courier_in_flight{worker="greeter"}"#));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most > 4.0, "at most {most} deliveries in flight at concurrency 4\n{}", worker.tail());
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |_| false).await;
    assert!(seen.missing(&ids).is_empty(), "{} not answered\n{}", seen.missing(&ids).len(), worker.tail());
    println!("kafka confirms: up to {most} deliveries in flight at concurrency 4 (broker round trip 300 ms)");
    assert!(worker.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_and_outage_lose_nothing() {
    let names = names("faults");
    let mut cluster = start_cluster(&names);
    let mut worker = greeter("faults", &cluster, &names, &[]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "f", 3_000).await;
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 500).await;
    // Replies refused by the broker for a while: requests are retried, none acked.
    cluster.command("fail-produces 40");
    client
        .collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 1_500)
        .await;
    // The broker goes away and comes back.
    cluster.command("down 1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.command("up 1");
    // Every request ends in one outcome: a reply, or (a reply refused on more than
    // --max-redeliveries rounds) an `undeliverable` dead letter, which has no error reply,
    // written to the parking topic when the dead-letter topic refused it too.
    let (dlq, parking) = (format!("{}.dlq", names.queue), format!("{}.parking", names.queue));
    let mut dead = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    let ended = |seen: &Replies, dead: &std::collections::HashMap<String, String>| {
        ids.iter().all(|id| seen.by_id.contains_key(id) || dead.contains_key(id))
    };
    while !ended(&seen, &dead) && std::time::Instant::now() < deadline {
        let patience = Duration::from_secs(2);
        client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, patience, |_| false).await;
        for topic in [&dlq, &parking] {
            while let Some(record) = client.next_record(topic, PARTITIONS, Duration::from_millis(500)).await {
                let get = |name: &str| record.headers.get(name).cloned().unwrap_or_default();
                dead.insert(get("courier-correlation-id"), get("courier-failure-code"));
            }
        }
    }
    let missing: Vec<&String> =
        ids.iter().filter(|id| !seen.by_id.contains_key(*id) && !dead.contains_key(*id)).collect();
    println!(
        "kafka faults: {} answered, {} dead-lettered or parked {:?}, {} lost, {} duplicates",
        seen.by_id.len(),
        dead.len(),
        dead.values().collect::<std::collections::HashSet<_>>(),
        missing.len(),
        seen.duplicates()
    );
    assert!(missing.is_empty(), "lost {:?}\n{}", missing, worker.tail());
    assert!(dead.values().all(|code| code == "reply_refused"), "only refused replies are dead-lettered: {dead:?}");
    assert!(worker.running(), "the worker recovered by itself:\n{}", worker.tail());
    assert!(worker.terminate());
}

/// Requests whose dead-letter copy the producer cannot write whole: one of 1,010,000 bytes
/// of bad JSON (under `--max-payload-bytes`; its copy with the failure headers passes) and
/// one of 1.5 MB (`too-large`; its copy goes without the payload). Each reaches its outcome
/// within seconds, and the next request with the same key (same partition) is answered:
/// MSG_SIZE_TOO_LARGE must never count as a failure a redelivery can cure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_reach_their_outcome_and_the_partition_moves_on() {
    let names = names("large");
    let cluster = start_cluster(&names);
    let mut worker = greeter("large", &cluster, &names, &[]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    // 1.5 MB: the mock cluster cannot serve a record of 5 MB to a consumer (tansu.rs runs 5 MB).
    courier_tests::kafka::oversized_requests(&mut client, &names.queue, &names.replies, PARTITIONS, 1_500_000, || {
        worker.tail()
    })
    .await;
    assert!(worker.terminate());
}

/// A binary key (a Java `LongSerializer` key, say: eight bytes, not UTF-8) reaches the
/// reply and the dead-letter copy byte for byte, so they land where a keyed consumer
/// expects them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_reach_replies_and_dead_letters_unchanged() {
    let names = names("binkey");
    let cluster = start_cluster(&names);
    let mut worker = greeter("binkey", &cluster, &names, &[]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let key = [0xff, 0x00, 0x80, 0x7f, 0xfe, 0x01, 0xc3, 0x28];
    let reply_to = names.replies.as_bytes();
    let ok: [(&str, &[u8]); 2] = [("courier-correlation-id", b"ok"), ("courier-reply-to", reply_to)];
    client.publish_raw(&names.queue, &key, br#"{"message":"binary"}"#, &ok).await;
    let bad: [(&str, &[u8]); 2] = [("courier-correlation-id", b"bad"), ("courier-reply-to", reply_to)];
    client.publish_raw(&names.queue, &key, b"not json", &bad).await;
    for _ in 0..2 {
        let reply = client.next_record(&names.replies, PARTITIONS, PATIENCE).await.expect("a reply");
        assert_eq!(reply.key.as_deref(), Some(&key[..]), "reply key\n{}", worker.tail());
    }
    let dlq = format!("{}.dlq", names.queue);
    let record = client.next_record(&dlq, PARTITIONS, PATIENCE).await.expect("the dead letter");
    assert_eq!(record.key.as_deref(), Some(&key[..]), "dead-letter key");
    assert!(worker.terminate());
}

/// The random mix of `tests/rabbitmq_disconnect.rs` on Kafka: a member killed with -9 a
/// third of the way, the broker down for two seconds at two thirds; afterwards each
/// request has exactly its outcome, none lost, none wrong; duplicates are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_mix_through_kill_9_and_a_broker_outage_gives_each_request_its_outcome() {
    use courier_tests::mix::{self, Outcomes};
    let seed = mix::seed();
    let names = names("mix");
    let mut cluster = start_cluster(&names);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let requests = mix::requests(seed, 900);
    for request in &requests {
        let mut headers: Vec<(&str, &[u8])> =
            vec![("courier-correlation-id", request.id.as_bytes()), ("courier-reply-to", names.replies.as_bytes())];
        headers.extend(request.headers.iter().map(|(name, value)| (*name, value.as_bytes())));
        client.publish_raw(&names.queue, request.id.as_bytes(), &request.payload, &headers).await;
    }
    // Slow enough (30 ms a request, one at a time per partition) that the kill and the
    // outage land mid-load; the readers are up before the worker starts.
    let slow = [("GREETER_LATENCY_MS", "30")];
    let dlq = format!("{}.dlq", names.queue);
    for topic in [&names.replies, &dlq] {
        assert!(client.next_record(topic, PARTITIONS, Duration::from_millis(500)).await.is_none());
    }
    let mut first = greeter_with("mix-a", &cluster, &names, &slow, "8", &[]);
    let started = std::time::Instant::now();
    let mut outcomes = Outcomes::default();
    let gather = async |client: &mut KafkaClient, outcomes: &mut Outcomes, target: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while requests.iter().filter(|r| outcomes.finished(r)).count() < target && std::time::Instant::now() < deadline
        {
            // A few at a time: replies arrive as fast as they are read, and the count is
            // what says when to strike.
            for _ in 0..20 {
                let Some(reply) = client.next_record(&names.replies, PARTITIONS, Duration::from_millis(20)).await
                else {
                    break;
                };
                outcomes.reply(&reply);
            }
            for _ in 0..20 {
                let Some(record) = client.next_record(&dlq, PARTITIONS, Duration::from_millis(20)).await else { break };
                outcomes.dead_letter(&record);
            }
        }
    };
    gather(&mut client, &mut outcomes, requests.len() / 3).await;
    first.kill9();
    let at_kill = requests.iter().filter(|r| outcomes.finished(r)).count();
    let rate = at_kill as f64 / started.elapsed().as_secs_f64();
    let mut second = greeter_with("mix-b", &cluster, &names, &slow, "8", &[]);
    gather(&mut client, &mut outcomes, requests.len() * 2 / 3).await;
    let at_outage = requests.iter().filter(|r| outcomes.finished(r)).count();
    cluster.command("down 1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.command("up 1");
    gather(&mut client, &mut outcomes, requests.len()).await;
    let verdict = outcomes.check(&requests);
    println!(
        "kafka random mix (seed {seed}): {} requests ({at_kill} finished at the kill, {at_outage} at the outage), {} lost, {} wrong, {} duplicate replies",
        requests.len(),
        verdict.lost.len(),
        verdict.wrong.len(),
        verdict.duplicates
    );
    assert!(verdict.wrong.is_empty(), "seed {seed}: {:?}", &verdict.wrong[..verdict.wrong.len().min(5)]);
    assert!(
        verdict.lost.is_empty(),
        "seed {seed}: lost {:?}\n{}",
        &verdict.lost[..verdict.lost.len().min(5)],
        second.tail()
    );
    // The kill repeats the outputs in flight (8 handlers, 80 awaiting confirms) and what was
    // answered since the last commit (every 100 ms; 300 ms allows for its round trip).
    let bound = 88.0 + rate * 0.3;
    println!("kafka random mix: duplicate bound {bound:.0} at {rate:.0} requests/s");
    assert!(verdict.duplicates as f64 <= bound, "{} duplicates, bound {bound:.0}", verdict.duplicates);
    assert!(second.terminate());
}

/// A broker that never answers CreateTopics (the mock cluster): `courier topology declare`
/// and the worker's start-up fail with a clear error within their timeout (10 s for the
/// request), instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_against_a_broker_that_never_creates_topics_fails_in_bounded_time() {
    let names = names("nocreate");
    let cluster = MockKafkaProcess::start(&[]);
    let broker = format!("kafka://{}", cluster.bootstrap);
    let started = std::time::Instant::now();
    let args: Vec<String> =
        ["topology", "declare", "--worker", "greeter", "--broker", &broker, "--queue", &names.queue, "--retry-delays="]
            .map(String::from)
            .to_vec();
    let (code, stdout, stderr) = courier_tests::process::courier(&args);
    let took = started.elapsed();
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("did not answer CreateTopics"), "{stderr}");
    println!("topology declare gave up after {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    let args = ["--broker", &broker, "--queue", &names.queue, "--replies", &names.replies, "--retry-delays="];
    let mut worker = Process::start("greeter", "nocreate", &args, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while worker.running() {
        assert!(std::time::Instant::now() < deadline, "the worker still waits\n{}", worker.tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert!(log.contains("did not answer CreateTopics"), "{}", worker.tail());
}

/// A member that (re)starts is not ready before it holds an assignment: the first 200 of
/// its `/readyz` comes after its log says "Partitions assigned.".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_member_is_not_ready_before_it_has_partitions() {
    let names = names("ready");
    let cluster = start_cluster(&names);
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let broker = format!("kafka://{}", cluster.bootstrap);
    let partitions = PARTITIONS.to_string();
    let args = [
        "--broker",
        &broker,
        "--queue",
        &names.queue,
        "--replies",
        &names.replies,
        "--group",
        &names.group,
        "--retry-delays",
        "1s",
        "--partitions",
        &partitions,
        "--http-addr",
        &addr,
    ];
    let worker = Process::start("greeter", "ready", &args, &[]);
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut not_ready = 0;
    loop {
        match courier_tests::http::get(port, "/readyz").await.0 {
            200 => break,
            503 => not_ready += 1,
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert!(log.contains("Partitions assigned."), "ready before its partitions:\n{log}");
    println!("kafka readiness: {not_ready} answers of 503 before the first 200");
    assert!(not_ready > 0, "the endpoint answered before the assignment too");
}

/// SIGTERM with handlers that take 3 s and `--shutdown-grace 1s`: the process ends within
/// the grace plus the close bound the README states (librdkafka's close: commit, leave the
/// group, flush the producer), and the unfinished requests are answered by the next member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_grace_and_the_close_bound() {
    let names = names("shutdown");
    let cluster = start_cluster(&names);
    let slow = [("GREETER_LATENCY_MS", "3000")];
    let mut worker = greeter_with("shutdown-a", &cluster, &names, &slow, "8", &["--shutdown-grace", "1s"]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "s", 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly\n{}", worker.tail());
    let took = started.elapsed();
    println!("kafka shutdown: exited {took:?} after SIGTERM (grace 1 s, handlers 3 s)");
    assert!(took <= Duration::from_secs(1) + CLOSE_BOUND + SLACK, "{took:?}\n{}", worker.tail());
    // With its HTTP endpoints too: they hold a handle of the transport until the end.
    let addr = format!("127.0.0.1:{}", courier_tests::http::free_port());
    let mut next =
        greeter_with("shutdown-b", &cluster, &names, &[], "8", &["--shutdown-grace", "1s", "--http-addr", &addr]);
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |_| false).await;
    assert!(seen.missing(&ids).is_empty(), "{} unanswered\n{}", seen.missing(&ids).len(), next.tail());

    // With the broker gone, closing cannot commit or leave the group: still bounded.
    let mut cluster = cluster;
    cluster.command("down 1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let _ = next.terminate();
    let took = started.elapsed();
    println!("kafka shutdown with the broker down: exited {took:?} after SIGTERM (grace 1 s)");
    assert!(took <= Duration::from_secs(1) + CLOSE_BOUND + SLACK, "{took:?}\n{}", next.tail());
}

/// SIGTERM while each partition's request is in the handler: the worker finishes them
/// within the grace and its last commit includes them, so the next member of the group
/// redoes none of them. The periodic commit is set to ten minutes: only the stop's own
/// commit counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_commits_what_it_finished_during_the_grace() {
    let names = names("clean-stop");
    let cluster = start_cluster(&names);
    let no_periodic_commit = ["--kafka-property", "auto.commit.interval.ms=600000", "--shutdown-grace", "10s"];
    let slow = [("GREETER_LATENCY_MS", "1500")];
    let mut first = greeter_with("clean-stop-a", &cluster, &names, &slow, "64", &no_periodic_commit);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "c", 60).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(first.terminate(), "SIGTERM ends the worker cleanly\n{}", first.tail());
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, usize::MAX, &mut seen, Duration::from_secs(2), |_| false).await;
    let finished = seen.by_id.len();
    assert!(finished >= 1, "the requests in the handlers at SIGTERM are answered within the grace");
    let mut next = greeter_with("clean-stop-b", &cluster, &names, &[], "64", &no_periodic_commit);
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |_| false).await;
    assert!(seen.missing(&ids).is_empty(), "{} unanswered\n{}", seen.missing(&ids).len(), next.tail());
    client.collect_replies(&names.replies, PARTITIONS, usize::MAX, &mut seen, Duration::from_secs(3), |_| false).await;
    println!("kafka clean stop: {finished} answered during the grace, {} redone by the next member", seen.duplicates());
    assert_eq!(seen.duplicates(), 0, "what the stopped member finished was committed");
    assert!(next.terminate());
}

/// What closing may take after the grace period (README, "Graceful shutdown").
const CLOSE_BOUND: Duration = courier::app::CLOSE_BOUND;
/// Signal delivery and process exit on a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

/// A member whose circuit breaker is open pauses its partitions and reads on: a member
/// joining meanwhile gets partitions (the open one serves the rebalance), and a kill -9 of
/// the open member loses nothing. Once the dependency is back, every request is answered
/// ok and nothing was dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_keeps_the_group_going_and_a_kill_9_while_open_loses_nothing() {
    let names = names("breaker");
    // Three tiers: a probe that fails uses one, and a request must not run out of them
    // while the dependency is down.
    let mut topics = topics(&names);
    topics.extend(["2s", "4s"].map(|delay| (format!("{}.retry.{delay}", names.queue), PARTITIONS)));
    let specs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    let cluster = MockKafkaProcess::start(&specs);
    let switch = courier_tests::outage::Outage::begin(&names.queue);
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let tiers = ["--retry-delays", "2s,4s"];
    let flags =
        [&tiers[..], &["--breaker-cooldown", "1s", "--breaker-max-cooldown", "2s", "--http-addr", &addr]].concat();
    let mut a = greeter_with("breaker-a", &cluster, &names, &switch.env(), "64", &flags);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "b", 2_000).await;
    a.wait_for_log("Circuit breaker open", PATIENCE);
    let b_flags = [&tiers[..], &["--breaker-cooldown", "1s", "--breaker-max-cooldown", "2s"]].concat();
    // Waits until it has partitions: the open member gave some up.
    let mut b = greeter_with("breaker-b", &cluster, &names, &switch.env(), "64", &b_flags);
    let (status, _) = courier_tests::http::get(port, "/readyz").await;
    assert_eq!(status, 200, "the open member is ready: its dependency is down, not the member");
    a.kill9();
    switch.end();
    let recovered = std::time::Instant::now();
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let drain = recovered.elapsed();
    let dlq = format!("{}.dlq", names.queue);
    let dead_lettered = client.next_record(&dlq, PARTITIONS, Duration::from_secs(1)).await;
    println!(
        "kafka breaker: {} of {} answered ({:?}), {} lost, {} duplicates, drained {:.1} s after recovery",
        seen.by_id.len(),
        ids.len(),
        seen.by_status,
        seen.missing(&ids).len(),
        seen.duplicates(),
        drain.as_secs_f64()
    );
    assert!(seen.missing(&ids).is_empty(), "nothing lost:\n{}", b.tail());
    // Duplicates (replayed after the kill -9) are ok replies too.
    let ok = seen.by_status.get("ok").copied().unwrap_or_default();
    assert_eq!(ok, seen.by_id.len() + seen.duplicates(), "every request answered ok: {:?}", seen.by_status);
    assert!(dead_lettered.is_none(), "nothing dead-lettered: {dead_lettered:?}");
    assert!(b.terminate(), "SIGTERM ends the worker cleanly");
}

/// `--retry-in-place --ordering key`: while the dependency is down, each key's first
/// record retries in the worker and the key's later records wait behind it. A kill -9
/// during the hold loses nothing and keeps every key's order (no offset passed the held
/// record), and a lane with more records waiting behind it than it may buffer has its
/// partition paused meanwhile; once the dependency is back, a new member answers
/// everything in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_keeps_each_key_in_order_through_a_kill_9() {
    let names = names("inplace");
    let cluster = start_cluster_with_tiers(&names, &["2s", "4s", "8s"]);
    let switch = courier_tests::outage::Outage::begin(&names.queue);
    let flags = [
        "--retry-in-place",
        "--ordering",
        "key",
        "--retry-attempts",
        "1",
        "--retry-delays",
        "2s,4s,8s",
        "--breaker",
        "off",
    ];
    let mut a = greeter_with("inplace-a", &cluster, &names, &switch.env(), "64", &flags);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let keys: Vec<String> = (0..6).map(|k| format!("key-{k}")).collect();
    let mut sent: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    for i in 0..5 {
        for key in &keys {
            let id = format!("{key}-{i}");
            let body = format!(r#"{{"message":"{id}"}}"#);
            let headers: [(&str, &[u8]); 2] =
                [("courier-correlation-id", id.as_bytes()), ("courier-reply-to", names.replies.as_bytes())];
            client.publish_raw(&names.queue, key.as_bytes(), body.as_bytes(), &headers).await;
            sent.entry(key).or_default().push(id);
        }
    }
    a.wait_for_log("retrying in place", PATIENCE);
    // More than may wait behind a held lane: its partition is paused, the rest read on.
    let crowd: Vec<String> = (5..1_205).map(|i| format!("key-0-{i}")).collect();
    client.publish_greetings_under(&names.queue, &names.replies, "key-0", &crowd).await;
    sent.entry("key-0").or_default().extend(crowd);
    a.wait_for_log("Records pile up behind a record retrying in place", PATIENCE);
    a.kill9();
    switch.end();
    let mut b = greeter_with("inplace-b", &cluster, &names, &[], "64", &flags);
    let total: usize = sent.values().map(Vec::len).sum();
    let mut order: Vec<String> = Vec::new();
    let mut duplicates = 0;
    while order.len() < total {
        let reply = client.next_record(&names.replies, PARTITIONS, PATIENCE).await.expect("every request is answered");
        assert_eq!(reply.headers.get("courier-status").map(String::as_str), Some("ok"), "{}", b.tail());
        let id = reply.headers.get("courier-correlation-id").cloned().unwrap_or_default();
        if order.contains(&id) {
            duplicates += 1;
        } else {
            order.push(id);
        }
    }
    println!("retry in place through kill -9: {total} answered in order per key, {duplicates} duplicates");
    for (key, ids) in &sent {
        let answered: Vec<&String> = order.iter().filter(|id| id.starts_with(&format!("{key}-"))).collect();
        assert_eq!(answered, ids.iter().collect::<Vec<_>>(), "{key}: answered in publish order");
    }
    let dlq = format!("{}.dlq", names.queue);
    assert!(client.next_record(&dlq, PARTITIONS, Duration::from_secs(1)).await.is_none(), "nothing dead-lettered");
    assert!(b.terminate(), "SIGTERM ends the worker cleanly");
}

/// A record in a retry tier dated a day ahead (a producer's clock, or a forged record) is
/// held no longer than the tier's delay after it was read, and so is a real retry behind
/// it in the same partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_record_does_not_stall_its_retry_tier() {
    use rdkafka::{
        config::ClientConfig,
        message::{Header, OwnedHeaders},
        producer::{FutureProducer, FutureRecord},
    };

    let names = names("future");
    let cluster = start_cluster(&names);
    let mut worker = greeter("future", &cluster, &names, &[]);
    let tier = format!("{}.retry.1s", names.queue);
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &cluster.bootstrap).create().expect("producer");
    let now_ms = i64::try_from(std::time::SystemTime::UNIX_EPOCH.elapsed().expect("clock").as_millis()).expect("ms");
    let started = std::time::Instant::now();
    for (id, timestamp) in [("dated-ahead", now_ms + 86_400_000), ("real-retry", now_ms)] {
        let body = format!(r#"{{"message":"{id}"}}"#);
        let headers = OwnedHeaders::new()
            .insert(Header { key: "courier-correlation-id", value: Some(id) })
            .insert(Header { key: "courier-reply-to", value: Some(names.replies.as_str()) })
            .insert(Header { key: "courier-attempt", value: Some("2") });
        let record =
            FutureRecord::to(&tier).partition(0).key(id).payload(body.as_str()).headers(headers).timestamp(timestamp);
        producer.send(record, Duration::from_secs(10)).await.expect("record written");
    }
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let mut seen = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, 2, &mut seen, Duration::from_secs(20), |_| false).await;
    let took = started.elapsed();
    println!("future-dated record in a 1 s tier: both answered after {took:.1?}");
    assert_eq!(seen.by_id.len(), 2, "both answered within the tier's delay and the patience:\n{}", worker.tail());
    assert!(took < Duration::from_secs(15), "held no longer than about the tier's delay: {took:?}");
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly");
}

/// `--retry-in-place --ordering partition --concurrency 1`: the one request fails while
/// its dependency is down and waits out its tier in place; once the dependency is back it
/// is answered after that wait, though the worker's only handler slot was free for the
/// loop meanwhile and its partition held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_at_concurrency_one_retries() {
    let names = names("inplace1");
    let cluster = start_cluster_with_tiers(&names, &["2s"]);
    let switch = courier_tests::outage::Outage::begin(&names.queue);
    let flags = [
        "--retry-in-place",
        "--ordering",
        "partition",
        "--retry-attempts",
        "1",
        "--retry-delays",
        "2s",
        "--breaker",
        "off",
    ];
    let mut worker = greeter_with("inplace1", &cluster, &names, &switch.env(), "1", &flags);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    client.publish_one(&names.queue, &names.replies, "held-once");
    worker.wait_for_log("retrying in place", PATIENCE);
    switch.end();
    let back = std::time::Instant::now();
    let reply = client.next_record(&names.replies, PARTITIONS, Duration::from_secs(20)).await;
    let took = back.elapsed();
    println!("retry in place at concurrency 1: answered {took:.1?} after the dependency came back");
    let reply = reply.unwrap_or_else(|| panic!("answered after its in-place wait:\n{}", worker.tail()));
    assert_eq!(reply.headers.get("courier-status").map(String::as_str), Some("ok"));
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly");
}
