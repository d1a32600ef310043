//! `courier console` on the local RabbitMQ, in a real headless browser, with the real
//! greeter and CLI processes.

courier_tests::console_drills!(courier_tests::rabbitmq::RabbitDrill::new("console_rabbitmq").await);
