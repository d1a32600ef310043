//! The greeter worker process. Flags: `greeter --help`; without `--broker` it runs the
//! dev console on the embedded in-memory broker.

/// mimalloc (`courier-allocator`), for Rust's allocations and the C libraries' (`malloc`):
/// the pipeline allocates a few small strings per message and librdkafka about ten, and
/// glibc's malloc was a third of the worker's CPU time under load.
#[global_allocator]
static ALLOCATOR: courier_allocator::MiMalloc = courier_allocator::MiMalloc;

fn main() -> anyhow::Result<()> {
    courier_allocator::unmap_large_blocks();
    // Drill switches (docs/operations.md): a broken dependency, one broken while a file
    // exists, a slow dependency.
    let dependency_down = std::env::var("GREETER_DEPENDENCY_DOWN").is_ok_and(|v| v == "1");
    let down_while = std::env::var_os("GREETER_DEPENDENCY_DOWN_FILE").map(std::path::PathBuf::from);
    let latency =
        std::env::var("GREETER_LATENCY_MS").ok().and_then(|v| v.parse().ok()).map(std::time::Duration::from_millis);
    courier::app::main(greeter::Greeter { dependency_down, down_while, latency })
}
