//! `kubectl-iogate`: a kubectl plugin (`kubectl iogate top`) showing the
//! iogate metrics sidecars' per-container block I/O across the cluster.
//! The logic is in the library ([`kubectl_iogate::top`]); this file only
//! prints and chooses the exit status: 0 shown, 1 nothing could be shown, 2
//! a usage error.

use std::io::Write;
use std::process::ExitCode;

use kubectl_iogate::cli;

const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let args = match command {
        cli::Command::Help => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        cli::Command::Top(args) => args,
    };
    // One thread is plenty for a handful of concurrent GETs.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubectl_iogate::top(&args)) {
        Ok(output) => {
            for line in output.warnings.iter().chain(&output.notes) {
                eprintln!("{line}");
            }
            // A closed pipe (`| head`) is not worth a panic.
            let _ = std::io::stdout().write_all(output.table.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
