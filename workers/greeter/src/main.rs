//! The greeter worker process. Flags: `greeter --help`; without `--broker` it runs the
//! dev console on the embedded in-memory broker.

/// mimalloc is the process's `malloc` (its `override` feature), so that librdkafka's C
/// allocations use it too: librdkafka allocates and frees across its threads about ten
/// times per record, and glibc's malloc spent 4,300 instructions per record on them.
/// Rust's allocations reach it through `malloc` as well (`System`): mimalloc's own
/// `GlobalAlloc` asks for an aligned block every time, and an aligned request whose size
/// is not a power of two over-allocates when its page has no free block at hand, instead
/// of refilling the page (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: std::alloc::System = std::alloc::System;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A call into mimalloc, so that the linker takes its `malloc` in whatever order it
    // reads the archives.
    std::hint::black_box(mimalloc::MiMalloc.version());
    // Drill switches (docs/operations.md): a broken dependency, one broken while a file
    // exists, a slow dependency.
    let dependency_down = std::env::var("GREETER_DEPENDENCY_DOWN").is_ok_and(|v| v == "1");
    let down_while = std::env::var_os("GREETER_DEPENDENCY_DOWN_FILE").map(std::path::PathBuf::from);
    let latency =
        std::env::var("GREETER_LATENCY_MS").ok().and_then(|v| v.parse().ok()).map(std::time::Duration::from_millis);
    courier::app::main(greeter::Greeter { dependency_down, down_while, latency }).await
}
