//! The `herd` binary: logging set up, then the command line ([`herd::cli`]).

use clap::Parser;

/// Every line allocates a little (its record, its messages); mimalloc serves such small,
/// short-lived allocations faster than the system allocator (measured with
/// `herd bench iamat`: see the README's Performance section). It is built without
/// transparent huge pages (`no_thp` in Cargo.toml): with them, the page faults of a growing
/// store sometimes waited on the kernel compacting memory, up to ~100 ms at a time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("herd=info")).init();
    herd::cli::Cli::parse().run()
}
