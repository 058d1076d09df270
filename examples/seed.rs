//! The seed run: Grad×Activation on every sublayer of Qwen2.5-1.5B-Instruct for
//! "The capital of France is", written to `./attrib-out` (table on stdout, progress on stderr).
//!
//! ```sh
//! cargo run --release --example seed                    # the default model from the hub
//! cargo run --release --example seed -- path/to/folder  # any Qwen2 folder or hub id
//! ```

use clap::Parser;

use attrib::cli::Cli;
use attrib::progress::Silent;

fn main() -> std::process::ExitCode {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| attrib::source::DEFAULT_MODEL.to_string());
    let cli = Cli::parse_from([
        "attrib",
        "--model",
        &model,
        "--prompt",
        "The capital of France is",
    ]);
    let attrib::cli::Command::Attribute(args) = cli.into_command() else {
        unreachable!("no subcommand given, so this is an attribution run")
    };
    match attrib::app::attribute_command(&args, &mut Silent, &mut |line| eprintln!("{line}")) {
        Ok(graph) => {
            print!("{}", attrib::report::score_table(&graph));
            eprintln!("{}", attrib::report::timing_line(&graph.timings));
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
