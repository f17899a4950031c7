//! The `emollama` command-line tool: one file per command under `commands/`, option
//! groups shared in `args.rs`; `anyhow` only here, at the edge.

mod args;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "emollama",
    version,
    about = "Emotion-LLaMA at the edge: encoders on ONNX Runtime, LLaMA on llama.cpp"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `emollama=debug,llama.cpp=warn`.
    /// (llama.cpp's warning about the double BOS is demoted to debug: the official
    /// prompt has one.)
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// Path to libonnxruntime.so (found automatically otherwise).
    #[arg(long, global = true)]
    ort_library: Option<PathBuf>,
    #[command(subcommand)]
    command: commands::Command,
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

/// 3: the request needs TensorRT and this machine has none (`compile`), so a script or
/// unit can tell "nothing to build here" from a failure; 1: any other error.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<emollama_commands::CommandError>() {
        Some(emollama_commands::CommandError::TensorRtUnavailable { .. }) => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A one-shot command whose reader went away (`emollama plan --json | head`) ends
    // quietly, as Unix tools do, instead of panicking on the failed write (Rust ignores
    // SIGPIPE). Not the service: a closed stdout must not stop it.
    if !matches!(cli.command, commands::Command::Serve(_)) {
        // SAFETY: restoring a signal's default disposition, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colours for a terminal only: journald stores the bytes as they come.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command.run(cli.ort_library, <Cli as clap::CommandFactory>::command()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            exit_code(&e)
        }
    }
}
