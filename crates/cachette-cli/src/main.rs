//! The `cachette` binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cachette_cli::cli::Cli::parse();
    cachette_cli::init_logging(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cachette: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cachette_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("cachette: {failure}");
            ExitCode::from(failure.code)
        }
    }
}
