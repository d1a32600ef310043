//! Nothing lost when a RabbitMQ node dies: a three-node cluster beside the system broker
//! (`scripts/brokers/rabbitmq-cluster`), workers given every node's URL, `--quorum`
//! queues (replicated on all three), and the node that leads a queue killed with -9
//! while messages wait in it. After each scenario every request id has exactly one
//! outcome — an ok reply, or a dead-letter record with an error reply — duplicates are
//! counted and printed, and none is lost.

use std::time::Duration;

use courier::transport::amqp::topology;
use courier_tests::{
    dlq::by_id,
    rabbitmq::{CONCURRENCY, RawClient, greeter_at, names},
    rabbitmq_cluster::{Cluster, NODES},
    replies::Replies,
};
use lapin::types::{AMQPValue, FieldTable, LongString};

/// How long a scenario waits for the next reply before it counts the rest as lost.
const PATIENCE: Duration = Duration::from_secs(60);

/// The requester's own reply queue: a quorum queue, so the replies outlive any one node.
async fn quorum_replies(client: &RawClient, name: &str) {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(&b"quorum"[..])));
    topology::declare_queue(&client.channel, name, args).await.expect("declare the reply queue");
}

/// Delete the queues of a scenario (from a node that is up).
async fn delete(client: &RawClient, queues: &[String]) {
    for queue in queues {
        let _ = client.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    }
}

/// Every message in `queue`, read through node `node`. Right after a leader died, RabbitMQ
/// 3.10 may refuse a `basic.get` on a channel that knew the old leader (`nodedown`): the
/// read goes on over a new connection.
async fn take(queue: &str, node: usize) -> Vec<courier::Message> {
    let mut messages = Vec::new();
    for _ in 0..20 {
        let client = RawClient::connect_to(&Cluster::url(node)).await;
        match client.take_into(queue, &mut messages).await {
            Ok(()) => return messages,
            Err(error) => println!("reading {queue}: {error}; again on a new connection"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("could not read {queue}");
}

/// The work queue's leader is killed while the worker is 3,000 requests into 10,000: the
/// queue elects another leader, the worker (connected to the dead node) reconnects to the
/// next URL of its list, and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queue_leader_dies_mid_load_and_nothing_is_lost() {
    let cluster = Cluster::up().await;
    let (queue, replies) = names("qleader");
    let mut worker = greeter_at(&Cluster::urls(), "qleader", &queue, &replies, &["--quorum"], &[]);
    let leader = cluster.leader(&queue, None);
    let near = NODES.into_iter().find(|n| *n != leader).expect("another node");
    let client = RawClient::connect_to(&Cluster::url(near)).await;
    let client_replies = format!("{queue}.client.replies");
    quorum_replies(&client, &client_replies).await;
    let ids = client.publish_greetings(&queue, &client_replies, "q", 10_000).await;
    let mut seen = Replies::default();
    client.collect_replies(&client_replies, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 3_000).await;
    assert!(seen.by_id.len() >= 3_000, "the worker made progress:\n{}", worker.tail());
    let answered_before = seen.by_id.len();
    cluster.kill(leader);
    client.collect_replies(&client_replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let new_leader = cluster.leader(&queue, Some(leader));
    let what = format!(
        "node {leader} (leader of the work queue) killed after {answered_before} replies, node {new_leader} leads now"
    );
    seen.assert_none_lost(&what, &ids, || worker.tail());
    // Redelivered: the deliveries unacked when the connection died (the prefetch), and
    // acks the dead leader took but had not committed.
    assert!(seen.duplicates() <= 2 * CONCURRENCY, "duplicates beyond two prefetches: {}", seen.duplicates());
    assert!(worker.running(), "the worker rode out the node's death:\n{}", worker.tail());
    cluster.start(leader).await;
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    let retry = format!("{queue}.retry.1s");
    delete(
        &client,
        &[queue.clone(), replies, client_replies, format!("{queue}.dlq"), format!("{queue}.parking"), retry],
    )
    .await;
}

/// Requests wait in a retry tier (a quorum queue with a 10 s TTL that dead-letters back to
/// the work queue, at-least-once) when the tier's leader is killed: each ends in the
/// dead-letter queue with an error reply — after its delay, or, since RabbitMQ 3.10 then
/// refuses the tier's publishes while the node is down, as `retry_refused`. With some
/// publishes nacked and others acked on one channel, it caught confirms read for the
/// wrong message (`Session::publish`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_tier_leader_dies_while_requests_wait_and_each_reaches_the_dead_letter_queue() {
    let cluster = Cluster::up().await;
    let (queue, replies) = names("qtier");
    let tier = format!("{queue}.retry.10s");
    let args = ["--quorum", "--retry-delays", "10s", "--retry-attempts", "1", "--breaker", "off"];
    let mut worker =
        greeter_at(&Cluster::urls(), "qtier", &queue, &replies, &args, &[("GREETER_DEPENDENCY_DOWN", "1")]);
    let leader = cluster.leader(&tier, None);
    let near = NODES.into_iter().find(|n| *n != leader).expect("another node");
    let client = RawClient::connect_to(&Cluster::url(near)).await;
    let client_replies = format!("{queue}.client.replies");
    quorum_replies(&client, &client_replies).await;
    let ids = client.publish_greetings(&queue, &client_replies, "t", 1_000).await;
    // Killed while the tier holds requests: once 500 went there, well within its delay.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&worker.log).unwrap_or_default().matches("retrying after a delay").count() < 500 {
        assert!(std::time::Instant::now() < deadline, "the tier never held requests:\n{}", worker.tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(leader);
    let mut seen = Replies::default();
    client.collect_replies(&client_replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let dead_letters = by_id(&take(&format!("{queue}.dlq"), near).await);
    let missing: Vec<&String> = ids.iter().filter(|id| !dead_letters.contains_key(*id)).collect();
    let duplicates: usize = dead_letters.values().map(|n| n - 1).sum();
    println!(
        "node {leader} (leader of the retry tier) killed while it held requests: {} of {} dead-lettered ({} \
         duplicates), {} error replies ({} duplicates), {} lost",
        dead_letters.len(),
        ids.len(),
        duplicates,
        seen.by_id.len(),
        seen.duplicates(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost {}, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        worker.tail()
    );
    assert!(seen.missing(&ids).is_empty(), "every dead letter has its error reply");
    assert_eq!(seen.by_status.get("ok"), None, "nothing succeeded with the dependency down");
    cluster.start(leader).await;
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    delete(
        &client,
        &[queue.clone(), replies, client_replies, format!("{queue}.dlq"), format!("{queue}.parking"), tier],
    )
    .await;
}

/// A memory alarm on the cluster (its watermark set near zero on the worker's node, which
/// blocks publishers on every node): the worker's replies wait and its `/readyz` turns 503;
/// the gateway answers a request within its timeout (503 or 504), not later, and its
/// `/readyz` turns 503 once its own publish was blocked; once the alarm
/// clears the worker resumes by itself and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_publishing_readiness_says_so_and_nothing_is_lost() {
    use courier_tests::http::{free_port, get, post, wait_for_status};

    let cluster = Cluster::up().await;
    let (queue, replies) = names("qalarm");
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let port: u16 = port.parse().expect("port");
    let args = ["--quorum", "--http-addr", &addr];
    let env = [("GREETER_LATENCY_MS", "200")];
    let mut worker = greeter_at(&Cluster::urls(), "qalarm", &queue, &replies, &args, &env);
    let client = RawClient::connect_to(&Cluster::url(2)).await;
    let client_replies = format!("{queue}.client.replies");
    quorum_replies(&client, &client_replies).await;
    let ids = client.publish_greetings(&queue, &client_replies, "a", 3_000).await;
    let mut seen = Replies::default();
    client.collect_replies(&client_replies, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 300).await;
    wait_for_status(port, "/readyz", 200, Duration::from_secs(10)).await;

    let gateway_port = free_port();
    let gateway_replies = format!("{queue}.gateway.replies");
    let gateway_args = [
        "--broker",
        &Cluster::urls(),
        "--queue",
        &queue,
        "--replies",
        &gateway_replies,
        "--listen",
        &format!("127.0.0.1:{gateway_port}"),
        "--timeout",
        "3s",
    ];
    let mut gateway = courier_tests::process::Process::start("gateway", "qalarm-gateway", &gateway_args, &[]);
    wait_for_status(gateway_port, "/readyz", 200, Duration::from_secs(30)).await;

    cluster.ctl(1, &["set_vm_memory_high_watermark", "0.000001"]);
    wait_for_status(port, "/readyz", 503, Duration::from_secs(10)).await;
    let asked = std::time::Instant::now();
    let (status, body) = post(gateway_port, "/process", r#"{"message":"blocked"}"#, &[]).await;
    let took = asked.elapsed();
    println!("memory alarm: readiness 503, gateway answered {status} in {took:?}: {body}");
    assert!(status == 503 || status == 504, "the gateway says the broker is unavailable: {status} {body}");
    assert!(took < Duration::from_secs(4), "answered within its timeout: {took:?}");
    // Its connection is blocked once it tried to publish: its readiness says so too.
    wait_for_status(gateway_port, "/readyz", 503, Duration::from_secs(5)).await;
    let (status, _) = get(port, "/readyz").await;
    assert_eq!(status, 503, "still blocked");

    cluster.ctl(1, &["set_vm_memory_high_watermark", "0.4"]);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(30)).await;
    client.collect_replies(&client_replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    seen.assert_none_lost("after the alarm", &ids, || worker.tail());
    assert!(gateway.terminate());
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    let retry = format!("{queue}.retry.1s");
    delete(
        &client,
        &[
            queue.clone(),
            replies,
            client_replies,
            format!("{queue}.dlq"),
            format!("{queue}.parking"),
            retry,
            gateway_replies,
        ],
    )
    .await;
}

/// `courier dlq replay` of 3,000 records (100 a second), `--quorum`, when the node leading the dead-letter
/// and work queues (and holding the replay's connection) is killed mid-way; replays are
/// run again until one finishes. No record may be acked out of the dead-letter queue
/// without reaching the work queue; a record replayed twice is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_through_a_node_death_loses_no_record() {
    use courier::contract::failure::FailureKind;
    use courier_tests::{dlq::dead_letter, process::courier};

    const RECORDS: usize = 3_000;
    let cluster = Cluster::up().await;
    let (queue, replies) = names("qreplay");
    let dlq = format!("{queue}.dlq");
    let flags: Vec<String> =
        ["--worker", "greeter", "--broker", &Cluster::urls(), "--queue", &queue, "--replies", &replies]
            .map(String::from)
            .to_vec();
    let run = |args: &[&str]| courier(&args.iter().map(|a| (*a).to_owned()).chain(flags.clone()).collect::<Vec<_>>());
    let (code, out, err) = run(&["topology", "declare", "--retry-delays=", "--quorum"]);
    assert_eq!(code, 0, "{out}{err}");
    let leader = cluster.leader(&dlq, None);
    let near = NODES.into_iter().find(|n| *n != leader).expect("another node");
    let client = RawClient::connect_to(&Cluster::url(near)).await;
    let records: Vec<courier::Message> =
        (0..RECORDS).map(|i| dead_letter(&format!("r{i}"), &queue, &replies, FailureKind::Transient)).collect();
    for chunk in records.chunks(500) {
        for record in chunk {
            let props = courier::transport::amqp::properties(record);
            let confirm = client
                .channel
                .basic_publish("".into(), dlq.as_str().into(), Default::default(), &record.payload, props)
                .await
                .expect("publish");
            assert!(confirm.await.expect("confirm").is_ack());
        }
    }

    let mut args: Vec<String> = ["dlq", "replay", "--rate", "100"].map(String::from).to_vec();
    args.extend(flags.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut replay = courier_tests::process::Process::start("courier", "qreplay", &args, &[]);
    let mut replayed = Vec::new();
    while replayed.len() < 300 {
        client.take_into(&queue, &mut replayed).await.expect("basic.get before the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replay.running(), "the replay finished before the kill: slow the rate down");
    cluster.kill(leader);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while replay.running() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("the first replay, after its node died: {}", replay.tail().lines().last().unwrap_or_default());
    // As an operator would: replay again until a replay finishes and stats count nothing.
    let mut reruns = Vec::new();
    for _ in 0..10 {
        let (code, out, err) = run(&["dlq", "replay"]);
        reruns.push(format!("{code}: {}{}", out.trim(), err.lines().next().unwrap_or_default()));
        let (_, stats, _) = run(&["dlq", "stats", "--json"]);
        let total = serde_json::from_str::<serde_json::Value>(&stats).ok().and_then(|s| s["total"].as_u64());
        if code == 0 && total == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    replayed.extend(take(&queue, near).await);
    let left = take(&dlq, near).await;
    let counts = by_id(&replayed);
    let missing: Vec<String> = (0..RECORDS)
        .map(|i| format!("r{i}"))
        .filter(|id| !counts.contains_key(id) && !by_id(&left).contains_key(id))
        .collect();
    let twice = counts.values().filter(|n| **n > 1).count();
    println!(
        "replay through node {leader}'s death: {} replayed ({} distinct, {twice} twice), {} left in the dead-letter \
         queue, {} lost; reruns: {reruns:?}",
        replayed.len(),
        counts.len(),
        left.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acked out of the dead-letter queue without a replay: {:?}",
        &missing[..missing.len().min(5)]
    );
    assert!(left.is_empty(), "a rerun that finished leaves nothing behind");
    cluster.start(leader).await;
    let queues = [queue.clone(), replies, dlq, format!("{queue}.parking")];
    delete(&client, &queues).await;
}
