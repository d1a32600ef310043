//! What an operator sees of a Kafka worker's backlog beyond lag: a partition held back by
//! one record that does not finish (`courier_oldest_unfinished_seconds`), a lane held by a
//! record retrying in place (`courier_held_lanes`), and the dead-letter topic's records
//! not yet settled by `courier dlq` (`courier_queue_depth`).

use std::time::Duration;

use courier_tests::{
    http::{free_port, get, metric},
    kafka::{KafkaClient, MockKafkaProcess},
    replies::Replies,
};

use super::kafka_workers::{PARTITIONS, PATIENCE, greeter_with, names, start_cluster_with_tiers, topics};

/// The largest value of `name` among the series of `topic`'s partitions (0 with none).
fn largest(text: &str, name: &str, topic: &str) -> f64 {
    let topic = format!(r#"topic="{topic}""#);
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&topic))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

/// Poll `/metrics` until `done` says so; the last text and how long it took.
async fn wait_until(port: u16, patience: Duration, done: impl Fn(&str) -> bool) -> Option<(String, Duration)> {
    let started = std::time::Instant::now();
    while started.elapsed() < patience {
        let (_, text) = get(port, "/metrics").await;
        if done(&text) {
            return Some((text, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn http(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A handler that does not return holds its partition's committed offset: the partition's
/// oldest unfinished record waits longer every sample, and the gauge falls to 0 once the
/// handler returns. Slowness is not a hold: no lane is shown held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_handler_shows_its_partition_waiting_until_it_returns() {
    let names = names("hang");
    let cluster = start_cluster_with_tiers(&names, &[]);
    let port = free_port();
    let env = [("GREETER_LATENCY_MS", "9000")];
    let mut worker = greeter_with("hang", &cluster, &names, &env, "64", &["--http-addr", &http(port)]);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "h", 1).await;
    let waiting = |text: &str| largest(text, "courier_oldest_unfinished_seconds", &names.queue);
    let seen = wait_until(port, PATIENCE, |text| waiting(text) >= 4.0).await;
    let (text, _) = seen.unwrap_or_else(|| panic!("the hanging record was never shown waiting\n{}", worker.tail()));
    assert_eq!(largest(&text, "courier_held_lanes", &names.queue), 0.0, "a slow handler holds no lane\n{text}");
    let mut replies = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, 1, &mut replies, PATIENCE, |_| false).await;
    assert!(replies.missing(&ids).is_empty(), "the slow request was answered\n{}", worker.tail());
    let fell = wait_until(port, Duration::from_secs(10), |text| waiting(text) == 0.0).await;
    let (_, took) = fell.unwrap_or_else(|| panic!("the gauge stayed up after the reply\n{}", worker.tail()));
    println!("kafka stuck partition: shown waiting {:.1} s, back to 0 within {took:?} of the reply", waiting(&text));
    assert!(worker.terminate());
}

/// A record retrying in place (`--ordering partition --retry-in-place`) holds its lane: the
/// partition shows one held lane and its oldest record waiting, both back to 0 once the
/// dependency is back and the record is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_retrying_in_place_shows_its_lane_held() {
    let names = names("held");
    let cluster = start_cluster_with_tiers(&names, &["2s", "3s", "4s", "5s"]);
    let port = free_port();
    let down = std::env::temp_dir().join(format!("{}.down", names.group));
    std::fs::write(&down, b"").expect("the outage file");
    let down_file = down.to_string_lossy().into_owned();
    let env = [("GREETER_DEPENDENCY_DOWN_FILE", down_file.as_str()), ("COURIER_BREAKER", "off")];
    let args =
        ["--http-addr", &http(port), "--ordering", "partition", "--retry-in-place", "--retry-delays", "2s,3s,4s,5s"];
    let mut worker = greeter_with("held", &cluster, &names, &env, "64", &args);
    let mut client = KafkaClient::new(&cluster.bootstrap);
    let ids = client.publish_greetings(&names.queue, &names.replies, "r", 1).await;
    let held = |text: &str| largest(text, "courier_held_lanes", &names.queue);
    let waiting = |text: &str| largest(text, "courier_oldest_unfinished_seconds", &names.queue);
    let seen = wait_until(port, PATIENCE, |text| held(text) == 1.0 && waiting(text) >= 3.0).await;
    let _ = std::fs::remove_file(&down);
    let (text, _) = seen.unwrap_or_else(|| panic!("the held lane was never shown\n{}", worker.tail()));
    let mut replies = Replies::default();
    client.collect_replies(&names.replies, PARTITIONS, 1, &mut replies, PATIENCE, |_| false).await;
    assert!(replies.missing(&ids).is_empty(), "answered once the dependency was back\n{}", worker.tail());
    let released = wait_until(port, Duration::from_secs(10), |text| held(text) == 0.0 && waiting(text) == 0.0).await;
    assert!(released.is_some(), "the lane stayed shown held after the reply\n{}", worker.tail());
    println!("kafka held lane: 1 lane held, oldest waiting {:.1} s; both 0 after the reply", waiting(&text));
    assert!(worker.terminate());
}

/// The dead-letter topic's depth is what waits for an operator: every dead letter, less
/// those `courier dlq` settled (entries in `<topic>.ledger`, written here as it writes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_topic_shows_what_waits_until_the_ledger_settles_it() {
    let names = names("dlqdepth");
    let dlq = format!("{}.dlq", names.queue);
    let ledger = format!("{dlq}.ledger");
    let mut specs = topics(&names);
    specs.push((ledger.clone(), 1));
    let specs: Vec<(&str, i32)> = specs.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    let cluster = MockKafkaProcess::start(&specs);
    let port = free_port();
    let mut worker = greeter_with("dlqdepth", &cluster, &names, &[], "64", &["--http-addr", &http(port)]);
    let client = KafkaClient::new(&cluster.bootstrap);
    for n in 0..3 {
        let id = format!("{}-empty-{n}", names.queue);
        let headers: [(&str, &[u8]); 3] = [
            ("courier-message-id", id.as_bytes()),
            ("courier-correlation-id", id.as_bytes()),
            ("courier-reply-to", names.replies.as_bytes()),
        ];
        client.publish_raw(&names.queue, id.as_bytes(), br#"{"message":""}"#, &headers).await;
    }
    let series = format!(r#"courier_queue_depth{{queue="{dlq}",worker="greeter"}}"#);
    let depth = |text: &str| metric(text, &series);
    let three = wait_until(port, PATIENCE, |text| depth(text) == 3.0).await;
    assert!(three.is_some(), "three dead letters shown waiting\n{}", worker.tail());
    // Two of them settled, as `courier dlq replay` records them.
    let reader = courier_tests::kafka::reader(&cluster.bootstrap, &dlq, PARTITIONS);
    for _ in 0..2 {
        use rdkafka::Message as _;
        let record = tokio::time::timeout(PATIENCE, reader.recv()).await.expect("a dead letter").expect("read");
        let key = format!("{}:{}", record.partition(), record.offset());
        client.publish_raw(&ledger, key.as_bytes(), br#"{"action":"moved"}"#, &[]).await;
    }
    let one = wait_until(port, PATIENCE, |text| depth(text) == 1.0).await;
    let (_, took) = one.unwrap_or_else(|| panic!("two settled, one waiting\n{}", worker.tail()));
    println!("kafka dead-letter depth: 3 waiting, 1 once two were settled in the ledger ({took:?})");
    assert!(worker.terminate());
}
