//! The `codistill` command line, thin over the library.

use std::process::ExitCode;

const HELP: &str = "\
codistill: a training engine for knowledge distillation and online codistillation

USAGE:
    codistill <COMMAND>

COMMANDS:
    info       Print the build: version, backends and CPU threads
    help       Print this message

OPTIONS:
    -h, --help       Print this message
    -V, --version    Print the version
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("codistill {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("info") => {
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            println!("codistill {}", env!("CARGO_PKG_VERSION"));
            println!("backends: cpu ({threads} threads)");
            println!("cuda: not in this build (the CUDA backend is not implemented yet)");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: unknown command {other:?}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}
