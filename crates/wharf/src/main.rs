//! The `wharf` binary: `wharf serve` and the operator verbs. Kept thin: parsing lives in
//! `cli`, the work in the library crates.

mod bench;
mod cli;
mod client_cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// The allocator of `wharf serve` (and of `wharf bench`, both sides of its in-process
/// baseline included): mimalloc. A request through the server makes a few hundred small
/// allocations (h2 frames, header maps, futures, protobuf messages) that are freed on other
/// threads than the ones that made them; with glibc's malloc they were ~16% of the server's
/// instructions per single-message publish (callgrind, 2026-11-27).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e}");
            ExitCode::FAILURE
        }
    }
}
