//! `deployd`: the daemon. One role per subcommand; see `deployd --help`.

/// jemalloc, not glibc's malloc: a node runs for months, and glibc's arenas fragmented its
/// memory under the write path's churn of small allocations (see `docs/benchmarks.md`, soak).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    deployd::main()
}
