//! Hosts librdkafka's mock cluster (a Kafka-protocol broker) for other processes: the
//! multi-process and benchmark tests, and local experiments.
//!
//! Usage: mock-kafka [--brokers N] [--topic NAME:PARTITIONS]...
//! Prints `bootstrap=<host:port>` on stdout, then serves until stdin closes. Commands on
//! stdin, one per line: `down <broker>`, `up <broker>`, `fail-produces <n>`,
//! `clear-produces`, `create <name> <partitions>`, `rtt <broker> <milliseconds>`.

use std::io::BufRead;

use courier_tests::kafka::{Command, MockKafka};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut brokers = 1;
    let mut topics = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--brokers", Some(n)) => brokers = n.parse().expect("--brokers N"),
            ("--topic", Some(spec)) => {
                let (name, partitions) = spec.split_once(':').expect("--topic NAME:PARTITIONS");
                topics.push((name.to_owned(), partitions.parse::<i32>().expect("partitions")));
            }
            _ => panic!("usage: mock-kafka [--brokers N] [--topic NAME:PARTITIONS]..."),
        }
    }
    let cluster = MockKafka::start(brokers);
    for (name, partitions) in &topics {
        cluster.create_topics(&[name], *partitions);
    }
    println!("bootstrap={}", cluster.bootstrap);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["down", id] => cluster.command(Command::BrokerDown(id.parse().expect("broker id"))),
            ["up", id] => cluster.command(Command::BrokerUp(id.parse().expect("broker id"))),
            ["fail-produces", n] => cluster.command(Command::FailProduces(n.parse().expect("count"))),
            ["clear-produces"] => cluster.command(Command::ClearProduceErrors),
            ["rtt", id, ms] => cluster.command(Command::RoundTrip(
                id.parse().expect("broker id"),
                std::time::Duration::from_millis(ms.parse().expect("milliseconds")),
            )),
            ["create", name, partitions] => cluster.create_topics(&[name], partitions.parse().expect("partitions")),
            _ => eprintln!("mock-kafka: unknown command {line:?}"),
        }
        println!("ok");
    }
}
