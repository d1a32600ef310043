//! `courier dlq` on the local RabbitMQ, with the real greeter and CLI processes.

courier_tests::dlq_drills!(courier_tests::rabbitmq::RabbitDrill::new("dlq_rabbitmq").await);
