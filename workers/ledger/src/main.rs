//! The ledger worker process: `ledger --broker … --inbox postgres://…`. Flags: `ledger --help`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    courier::app::main(courier::Batched(ledger::Ledger)).await
}
