//! `netconn`: parse the command line, run the command, render an error once.

use std::process::ExitCode;

use clap::Parser as _;
use netconn_user::{
    agent,
    cli::{Cli, Command, check, generate, stats, top, unload, watch},
    logger, render_error,
};

fn main() -> ExitCode {
    logger::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let result = match cli.command {
        Command::Agent(options) => agent::run(options),
        Command::Stats(args) => stats::run(&args),
        Command::Watch(args) => watch::run(&args),
        Command::Completions(args) => generate::completions(&args),
        Command::Unload(args) => unload::run(&args),
        Command::GenerateMan(args) => generate::man_pages(&args),
        Command::Top(args) => top::run(&args),
        // The plugin contract: one line on stdout and its own exit codes.
        Command::Check(args) => return check::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netconn: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Usage errors exit 2, except under `check`, where the plugin contract says 3.
fn clap_exit(e: &clap::Error) -> ExitCode {
    let is_check = std::env::args().nth(1).as_deref() == Some("check");
    if is_check {
        let (text, status) = check::clap_error_report(e);
        println!("{}", text.trim_end());
        return ExitCode::from(status.code() as u8);
    }
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
}
