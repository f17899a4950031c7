//! The subcommands, one file each.

mod analyze;
mod bench;
mod compile;
mod doctor;
mod dump_inputs;
mod eval;
mod info;
mod install_bundle;
mod manpages;
mod plan;
mod profiles;
mod quantize;
mod serve;
mod transcribe;
mod watch;

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
    /// Evaluate a labelled set as the official MER2023 protocol does (list file, videos,
    /// pre-extracted features, transcripts): the paper's metrics, resumable; or compare
    /// two runs (--compare A B: what a quantization cost on the same clips).
    Eval(eval::EvalArgs),
    /// Benchmark the pipeline on this device: cold start, warm stages, decode vs raw llama.cpp.
    Bench(bench::BenchArgs),
    /// Build the TensorRT engines for this device into the engine cache, ahead of the
    /// service (exit 3 without TensorRT).
    Compile(compile::CompileArgs),
    /// Install a bundle for the service (default /usr/share/emollama/bundle), its
    /// checksums verified while it is copied; the old one is replaced only at the end.
    InstallBundle(install_bundle::InstallBundleArgs),
    /// Write the man pages (for packaging).
    #[command(hide = true)]
    Manpages(manpages::ManpagesArgs),
    /// The HTTP service (for systemd): POST /v1/analyze, the OpenAI-compatible
    /// /v1/chat/completions and /v1/models, /healthz, /readyz, /metrics.
    Serve(serve::ServeArgs),
    /// Follow a camera, stream or file window by window: one JSON line per window (label
    /// probabilities, latency, windows dropped), reconnecting a lost stream.
    Watch(watch::WatchArgs),
    /// What is said in a clip (its first 30 s), heard by the bundle's Whisper engines:
    /// the text alone (translated to English unless --task transcribe).
    Transcribe(transcribe::TranscribeArgs),
    /// The encoders' inputs for many clips in one process (the calibration inputs of
    /// emollama_export.quantize_encoders; `analyze --dump-inputs` for one clip).
    DumpInputs(dump_inputs::DumpInputsArgs),
    /// Quantize a GGUF with llama.cpp; with --bundle, write a new bundle (OUTPUT folder)
    /// whose LLM has that type and whose manifest is updated.
    Quantize(quantize::QuantizeArgs),
}

impl Command {
    /// `cli`: the whole command-line definition (for the man pages).
    pub fn run(self, ort_library: Option<PathBuf>, cli: clap::Command) -> anyhow::Result<()> {
        match self {
            Command::Info(a) => info::run(a, ort_library),
            Command::Analyze(a) => analyze::run(a, ort_library),
            Command::Profiles(a) => profiles::run(a),
            Command::Doctor(a) => doctor::run(a, ort_library),
            Command::Plan(a) => plan::run(a),
            Command::Bench(a) => bench::run(a, ort_library),
            Command::Eval(a) => eval::run(a, ort_library),
            Command::Compile(a) => compile::run(a, ort_library),
            Command::InstallBundle(a) => install_bundle::run(a),
            Command::Manpages(a) => manpages::run(a, cli),
            Command::Serve(a) => serve::run(a, ort_library),
            Command::Quantize(a) => quantize::run(a),
            Command::DumpInputs(a) => dump_inputs::run(a, ort_library),
            Command::Watch(a) => watch::run(a, ort_library),
            Command::Transcribe(a) => transcribe::run(a, ort_library),
        }
    }
}
