//! The ledger worker process: `ledger --broker … --inbox postgres://…`. Flags: `ledger --help`.

fn main() -> anyhow::Result<()> {
    courier::app::main(courier::Batched(ledger::Ledger))
}
