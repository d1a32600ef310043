//! Hosts librdkafka's mock cluster (a Kafka-protocol broker) for other processes: the
//! multi-process and benchmark tests, and local experiments.
//!
//! Usage: mock-kafka [--brokers N] [--topic NAME:PARTITIONS[:REPLICAS]]...
//! Prints `bootstrap=<host:port>` on stdout, then serves until stdin closes. Commands on
//! stdin, one per line: `down <broker>`, `up <broker>`, `fail-produces <n>`,
//! `clear-produces`, `create <name> <partitions> [replicas]`, `rtt <broker> <milliseconds>`,
//! `leader <topic> <partition> <broker>|none`, `coordinator <group> <broker>`.

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
                let mut parts = spec.split(':');
                let name = parts.next().expect("--topic NAME:PARTITIONS[:REPLICAS]");
                let partitions = parts.next().map_or(1, |p| p.parse::<i32>().expect("partitions"));
                let replicas = parts.next().map_or(1, |r| r.parse::<i32>().expect("replicas"));
                topics.push((name.to_owned(), partitions, replicas));
            }
            _ => panic!("usage: mock-kafka [--brokers N] [--topic NAME:PARTITIONS[:REPLICAS]]..."),
        }
    }
    let cluster = MockKafka::start(brokers);
    for (name, partitions, replicas) in &topics {
        cluster.create_replicated_topics(&[name], *partitions, *replicas);
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
            ["create", name, partitions, replicas] => cluster.create_replicated_topics(
                &[name],
                partitions.parse().expect("partitions"),
                replicas.parse().expect("replicas"),
            ),
            ["leader", topic, partition, id] => cluster.command(Command::Leader(
                (*topic).to_owned(),
                partition.parse().expect("partition"),
                id.parse().ok(),
            )),
            ["coordinator", group, id] => {
                cluster.command(Command::GroupCoordinator((*group).to_owned(), id.parse().expect("broker id")));
            }
            _ => eprintln!("mock-kafka: unknown command {line:?}"),
        }
        println!("ok");
    }
}
