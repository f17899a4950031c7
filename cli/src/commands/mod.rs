//! The subcommands, one file each.

mod analyze;
mod bench;
mod doctor;
mod info;
mod plan;
mod profiles;
mod quantize;
mod serve;

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Verify a bundle (checksums, shapes), load every engine for real and describe it.
    Info(info::InfoArgs),
    /// Recognise the emotion in a video (or reason about it, or answer a question).
    Analyze(analyze::AnalyzeArgs),
    /// List the device profiles (built in, and yours in ~/.config/emollama/profiles).
    Profiles(profiles::ProfilesArgs),
    /// This machine: board, JetPack, power mode, libraries and providers, problems and fixes.
    Doctor(doctor::DoctorArgs),
    /// Does a bundle fit a device? The memory plan: the settings that will run, and the
    /// changes that make it fit.
    Plan(plan::PlanArgs),
    /// Benchmark the pipeline on this device: cold start, warm stages, decode vs raw llama.cpp.
    Bench(bench::BenchArgs),
    /// The HTTP service (for systemd): POST /v1/analyze, /healthz, /readyz, /metrics.
    Serve(serve::ServeArgs),
    /// Quantize a GGUF with llama.cpp; with --bundle, write a new bundle (OUTPUT folder)
    /// whose LLM has that type and whose manifest is updated.
    Quantize(quantize::QuantizeArgs),
}

impl Command {
    pub fn run(self, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
        match self {
            Command::Info(a) => info::run(a, ort_library),
            Command::Analyze(a) => analyze::run(a, ort_library),
            Command::Profiles(a) => profiles::run(a),
            Command::Doctor(a) => doctor::run(a, ort_library),
            Command::Plan(a) => plan::run(a),
            Command::Bench(a) => bench::run(a, ort_library),
            Command::Serve(a) => serve::run(a, ort_library),
            Command::Quantize(a) => quantize::run(a),
        }
    }
}
