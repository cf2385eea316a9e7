//! `husk`: runc-compatible command line.

mod cli;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                // runc: 3 for an unknown command, 1 for any other usage error.
                ErrorKind::InvalidSubcommand => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let log = cli::Log::new(&args);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            log.error(&format!("{e:#}"));
            if e.downcast_ref::<cli::ExecFailed>().is_some() {
                ExitCode::from(cli::EXEC_FAILED_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
