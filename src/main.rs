//! The `flops-image-builder` binary: the sandbox launcher's re-exec, then FLOps' command-line
//! forms rewritten ([`cli::flops`]), clap's parse ([`cli::Cli`]), logging, and the command.

mod cli;

use clap::Parser;
use cli::run::{run_append, run_build, run_check, run_model};
use cli::{Cli, Command};
use flops_image_builder::error::kind_of;
use flops_image_builder::resolve::sandbox;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The package-code launcher (src/resolve/sandbox.rs): restrict, then exec; before anything else.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == sandbox::SANDBOX_ARG) {
        return ExitCode::from(sandbox::launcher_main(&raw[2..]) as u8);
    }
    let args: Vec<String> = std::env::args().collect();
    let args = match cli::flops::manager_args(&args) {
        Some(Ok(v)) => v,
        Some(Err(usage)) => {
            eprintln!("error: {usage}");
            return ExitCode::from(2);
        }
        None => cli::flops::seed_args(args),
    };
    let cli = Cli::parse_from(args);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOPS_LOG")
        .unwrap_or_else(|_| format!("warn,flops_image_builder={level}").into());
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Bars only for a person at a terminal; logs (containerd, CI) get plain timestamped lines.
    flops_image_builder::progress::init(!cli.quiet && terminal);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Append(a) => run_append(*a).await,
            Command::Check(a) => run_check(a).await,
            Command::Build(a) => run_build(*a).await,
            Command::Model(a) => run_model(*a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flops_image_builder::error::full(&e));
            ExitCode::from(kind_of(&e).exit_code() as u8)
        }
    }
}
