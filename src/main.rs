//! The `herd` binary: logging set up, then the command line ([`herd::cli`]).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

/// Every line allocates a little (its record, its messages); mimalloc serves such small,
/// short-lived allocations faster than the system allocator (measured with
/// `herd-bench iamat` against a build on the system allocator). It is built without
/// transparent huge pages (`no_thp` in Cargo.toml): with them, the page faults of a growing
/// store sometimes waited on the kernel compacting memory, up to ~100 ms at a time.
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
