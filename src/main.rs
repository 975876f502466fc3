//! The `herd` binary: logging set up, then the command line ([`herd::cli`]).

use clap::Parser;

/// Every line allocates a little (its bytes, its record, its answer); mimalloc serves such
/// small, short-lived allocations faster than the system allocator (measured with
/// `herd bench iamat`: see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("herd=info")).init();
    herd::cli::Cli::parse().run()
}
