//! The `wharf` binary: `wharf serve` and the operator verbs. Kept thin: parsing lives in
//! `cli`, the work in the library crates.

mod bench;
mod cli;
mod client_cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

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
