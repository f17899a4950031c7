//! The `emollama` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use emollama_engines::llm::{quantize, QuantType};
use emollama_engines::onnx::{Provider, ProviderPolicy};
use emollama_runtime::locate::{locate_bundle, BundleSource};
use emollama_runtime::report::inspect_bundle;

#[derive(Parser)]
#[command(name = "emollama", version, about = "Emotion-LLaMA at the edge: encoders on ONNX Runtime, LLaMA on llama.cpp")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `emollama=debug,llama.cpp=warn`.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// Path to libonnxruntime.so (found automatically otherwise).
    #[arg(long, global = true)]
    ort_library: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a bundle (checksums, shapes), load every engine for real and describe it.
    Info {
        /// Bundle folder; default: the installed bundle, else the synthetic one from setup.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Execution provider for the encoders: auto (TensorRT → CUDA → CPU), tensorrt, cuda, cpu.
        #[arg(long, default_value = "auto")]
        provider: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Quantize a GGUF with llama.cpp (f16, q8_0, q4_0, q4_k_m).
    Quantize { input: PathBuf, output: PathBuf, r#type: String },
}

fn provider_policy(name: &str) -> anyhow::Result<ProviderPolicy> {
    let one = |p: Provider| ProviderPolicy { order: vec![p], required: Some(p), ..ProviderPolicy::default() };
    Ok(match name {
        "auto" => ProviderPolicy::default(),
        "cpu" => ProviderPolicy::cpu_only(),
        "cuda" => one(Provider::Cuda),
        "tensorrt" => one(Provider::TensorRt),
        other => anyhow::bail!("unknown provider {other:?}: use auto, tensorrt, cuda or cpu"),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { bundle, provider, json } => {
            let (dir, source) = locate_bundle(bundle.as_deref())?;
            if source == BundleSource::SyntheticFallback {
                eprintln!("warning: no bundle given or installed; using the synthetic bundle at {} (random weights)", dir.display());
            }
            let report = inspect_bundle(&dir, &provider_policy(&provider)?, cli.ort_library.as_deref())
                .with_context(|| format!("bundle {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Quantize { input, output, r#type } => {
            let q = QuantType::parse(&r#type).with_context(|| format!("unknown type {type:?}: use f16, q8_0, q4_0 or q4_k_m", type = r#type))?;
            let threads = std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2);
            quantize(&input, &output, q, threads)?;
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
