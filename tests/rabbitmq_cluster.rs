//! Nothing lost when a RabbitMQ node dies: a three-node cluster beside the system broker
//! (`scripts/brokers/rabbitmq-cluster`), workers given every node's URL, `--quorum`
//! queues (replicated on all three), and the node that leads a queue killed with -9
//! while messages wait in it. After each scenario every request id has exactly one
//! outcome — an ok reply, or a dead-letter record with an error reply — duplicates are
//! counted and printed, and none is lost.

use std::time::Duration;

use courier::transport::amqp::topology;
use courier_tests::{
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
    let missing = seen.missing(&ids);
    let new_leader = cluster.leader(&queue, Some(leader));
    println!(
        "node {leader} (leader of the work queue) killed after {answered_before} replies; node {new_leader} leads \
         now: {} of {} answered, {} lost, {} duplicates",
        seen.by_id.len(),
        ids.len(),
        missing.len(),
        seen.duplicates()
    );
    assert!(
        missing.is_empty(),
        "lost {}, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        worker.tail()
    );
    assert!(seen.duplicates() <= CONCURRENCY + 1, "duplicates beyond the unacked window: {}", seen.duplicates());
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
