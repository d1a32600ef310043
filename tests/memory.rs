//! The contract suite on the in-memory transport, under paused tokio time.

use courier::testing::MemoryHarness;

courier::contract_suite!(
    #[tokio::test(start_paused = true)]
    MemoryHarness::default()
);
