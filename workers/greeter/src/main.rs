//! The greeter worker process. Flags: `greeter --help`; without `--broker` it runs the
//! dev console on the embedded in-memory broker.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dependency_down = std::env::var("GREETER_DEPENDENCY_DOWN").is_ok_and(|v| v == "1");
    courier::app::main(greeter::Greeter { dependency_down }).await
}
