//! `courier topology declare` and `courier topology lint` as operators run them.

use courier::testing::Harness;
use courier_tests::{kafka::MockKafkaProcess, process, rabbitmq};

/// Run `courier topology <command> --worker greeter <args>`: (exit code, stdout + stderr).
fn topology(command: &str, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = ["topology", command, "--worker", "greeter"].map(String::from).to_vec();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let (code, stdout, stderr) = process::courier(&all);
    (code, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_finds_missing_queues_on_rabbitmq() {
    let (queue, replies) = rabbitmq::names("lint");
    let url = rabbitmq::url();
    let args = ["--broker", &url, "--queue", &queue, "--replies", &replies, "--retry-delays", "1s"];
    let (code, out) = topology("lint", &args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("problem: {queue}: missing")), "{out}");

    let (code, out) = topology("declare", &args);
    assert_eq!(code, 0, "{out}");
    let (code, out) = topology("lint", &args);
    assert_eq!((code, out.contains("ok: every queue/topic of greeter is in place")), (0, true), "{out}");

    rabbitmq::RabbitHarness::new().await.delete(&[format!("{queue}.dlq")]).await;
    let (code, out) = topology("lint", &args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("problem: {queue}.dlq: missing")), "{out}");
    assert_eq!(out.matches("problem:").count(), 1, "{out}");
    rabbitmq::cleanup(&queue, &replies).await;
}

#[test]
fn lint_finds_missing_and_mis_sized_topics_on_kafka() {
    let cluster = MockKafkaProcess::start(&[
        ("good.requests", 3),
        ("good.requests.dlq", 3),
        ("good.requests.parking", 3),
        ("good.replies", 1),
        ("bad.requests", 3),
        ("bad.requests.dlq", 1),
        ("bad.replies", 1),
    ]);
    let broker = format!("kafka://{}", cluster.bootstrap);
    let args = |queue: &'static str, replies: &'static str| {
        let mut args = vec!["--broker".to_owned(), broker.clone(), "--queue".into(), queue.into()];
        args.extend(["--replies", replies, "--retry-delays=", "--partitions", "3"].map(String::from));
        args
    };
    let run = |args: Vec<String>| topology("lint", &args.iter().map(String::as_str).collect::<Vec<_>>());

    let (code, out) = run(args("good.requests", "good.replies"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(args("bad.requests", "bad.replies"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("problem: bad.requests.parking: missing"), "{out}");
    assert!(
        out.contains("problem: bad.requests.dlq: has 1 partitions, fewer than its source bad.requests (3)"),
        "{out}"
    );
    let six: Vec<String> =
        args("good.requests", "good.replies").into_iter().map(|a| if a == "3" { "6".into() } else { a }).collect();
    let (code, out) = run(six);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("problem: good.requests: has 3 partitions, --partitions says 6"), "{out}");
}
