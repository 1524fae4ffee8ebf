//! `outpost-loadgen`: thousands of simulated agents in one process, loading one Outpost server
//! through its real `/v1` API, and the figures of that load as `key=value` lines. `bench/scale`
//! starts the server and runs it; so does the crate's smoke test, at a small size.
//!
//! - [`args`]: the command line.
//! - [`sim`]: one simulated agent: register, heartbeat, watch, report.
//! - [`bench`]: the phases of a run: register, deploy, steady load, verification.
//! - [`specs`]: the services deployed, parsed as `outpost deploy` parses a file.
//! - [`figures`]: what is measured and how it is printed.

mod args;
mod bench;
mod figures;
mod sim;
mod specs;

use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match args::parse(std::env::args().skip(1)) {
        Ok(args::Parsed::Run(options)) => options,
        Ok(args::Parsed::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(&options)) {
        Ok(figures) => {
            for line in figures.lines() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one: each simulated agent keeps two or three
/// connections open and a listener for health probes, and the default soft limit (1024) would
/// stop the run at a few hundred.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("warning: cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}
