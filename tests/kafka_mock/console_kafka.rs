//! `courier console` on Kafka (the mock cluster in a process of its own), in a real
//! headless browser, with the real greeter and CLI processes.

// Small records: the mock cluster keeps ~5 MiB a partition.
courier_tests::console_drills!(courier_tests::kafka::KafkaDrill::new("console_kafka"), 0);
