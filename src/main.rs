//! The `herd` binary: logging set up, then the command line ([`herd::cli`]).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

/// Every line allocates a little (its record, its messages); mimalloc serves such small,
/// short-lived allocations faster than the system allocator (measured with
/// `herd-bench iamat` against a build on the system allocator). It is built without
/// transparent huge pages (`no_thp` in Cargo.toml): with them, the page faults of a growing
/// store sometimes waited on the kernel compacting memory, up to ~100 ms at a time. And it
/// is mimalloc 2 (`v2`): this crate asks for every allocation with its alignment, and
/// mimalloc 3 serves a size that is not a power of two through its slow over-allocating
/// path once that size's page is used up, which in a store that only grows is most of the
/// time (measured side by side: 1% more throughput at one server and in a chain with 2).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error ends the process with one line that says what went wrong and why (the chain of
/// causes joined), never a backtrace: a refused config is the user's to fix, not a bug.
fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("herd=info")).init();
    match herd::cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed standard error must not turn the exit into a panic.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
