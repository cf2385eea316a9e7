//! `husk`: runc-compatible command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let log = cli::Log::new(&args);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            log.error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
