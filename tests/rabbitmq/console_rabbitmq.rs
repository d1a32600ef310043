//! `courier console` on the local RabbitMQ, in a real headless browser, with the real
//! greeter and CLI processes.

// The 10,000 records carry 4 KiB of payload each: 40 MiB in all, more than the console
// may hold (`MAX_PEAK_KIB`).
courier_tests::console_drills!(courier_tests::rabbitmq::RabbitDrill::new("console_rabbitmq").await, 4096);
