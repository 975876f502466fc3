//! The `herd` binary: logging set up, then the command line ([`herd::cli`]).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("herd=info")).init();
    herd::cli::Cli::parse().run()
}
