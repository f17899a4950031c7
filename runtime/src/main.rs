//! The `emollama` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use emollama_devices::{detect, find_profile, load_profiles, plan, profile_dirs, Profile};
use emollama_engines::llm::{quantize, QuantType};
use emollama_engines::onnx::{Provider, ProviderPolicy};
use emollama_runtime::bench::{run_bench, write_outputs, BenchOptions, BenchReport};
use emollama_runtime::doctor::doctor;
use emollama_runtime::locate::{locate_bundle, BundleSource};
use emollama_runtime::pipeline::{AnalyzeRequest, Mode, Preset, Runtime, RuntimeConfig};
use emollama_runtime::prompt::{PromptLayout, Task};
use emollama_runtime::report::inspect_bundle;
use emollama_runtime::serve::{AppState, ReadyInfo, ServeConfig};
use emollama_runtime::transcript::{sidecar_subtitles, subtitles_text};

#[derive(Parser)]
#[command(
    name = "emollama",
    version,
    about = "Emotion-LLaMA at the edge: encoders on ONNX Runtime, LLaMA on llama.cpp"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `emollama=debug,llama.cpp=warn`.
    /// (llama.cpp's warning about the double BOS is silenced: the official prompt has one.)
    #[arg(long, global = true, default_value = "warn,llama.cpp=error")]
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
    /// Recognise the emotion in a video (or reason about it, or answer a question).
    Analyze(AnalyzeArgs),
    /// List the device profiles (built in, and yours in ~/.config/emollama/profiles).
    Profiles {
        #[arg(long)]
        json: bool,
    },
    /// This machine: board, JetPack, power mode, libraries and providers, problems and fixes.
    Doctor {
        #[arg(long)]
        json: bool,
        /// Read /proc, /etc and /sys under this folder instead of / (recorded boards).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Also plan this bundle on the detected profile.
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// Does a bundle fit a device? The memory plan, and the changes that make it fit.
    Plan {
        /// A profile name; default: every profile.
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the pipeline on this device: cold start, warm stages, decode vs raw llama.cpp.
    Bench {
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Media to analyze (default: the talking-face sample from setup).
        #[arg(long)]
        media: Vec<String>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Folder for bench.md, bench.json and bench.svg.
        #[arg(long, default_value = "emollama-bench")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
        /// An earlier bench.json: print the differences.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// The HTTP service (for systemd): POST /v1/analyze, /healthz, /readyz, /metrics.
    Serve(ServeArgs),
    /// Quantize a GGUF with llama.cpp (f16, q8_0, q4_0, q4_k_m); with --bundle, write a
    /// new bundle (OUTPUT folder) whose LLM has that type and whose manifest is updated.
    Quantize {
        /// A GGUF file, or with --bundle the bundle folder.
        input: PathBuf,
        output: PathBuf,
        r#type: String,
        #[arg(long)]
        bundle: bool,
    },
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Video file, URL, or camera device (/dev/video0).
    media: String,
    /// Bundle folder; default: the installed bundle, else the synthetic one from setup.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Device profile (default: detected); its memory plan runs before loading.
    #[arg(long)]
    profile: Option<String>,
    #[arg(long, value_enum, default_value = "emotion")]
    task: TaskArg,
    /// The question, with --task question.
    #[arg(long)]
    question: Option<String>,
    /// The MER2023/2024 six-label instruction instead of the nine-label one.
    #[arg(long)]
    six_labels: bool,
    /// Which instruction of the reasoning pool (0-4), with --task reason.
    #[arg(long, default_value_t = 0)]
    reason_index: usize,
    /// What the person says (English), for the prompt's transcript line.
    #[arg(long, conflicts_with = "transcript_file")]
    transcript: Option<String>,
    /// A text, .srt or .vtt file with the transcript (default: MEDIA's .srt/.vtt, if any).
    #[arg(long)]
    transcript_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "full")]
    mode: ModeArg,
    #[arg(long, value_enum, default_value = "eval")]
    preset: PresetArg,
    /// The official prompt to reproduce: eval (benchmark) or demo (two-turn Gradio prompt).
    #[arg(long, value_enum, default_value = "eval")]
    layout: LayoutArg,
    /// Label probabilities for the emotion task (on by default; --scores false turns them off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scores: bool,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads for the encoders and llama.cpp (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Encoder execution provider: auto, tensorrt, cuda, cpu.
    #[arg(long, default_value = "auto")]
    provider: String,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the preprocessed inputs and prompt ids to this folder (reference checks).
    #[arg(long, hide = true)]
    dump_inputs: Option<PathBuf>,
}

/// Every configuration key, as a flag overriding the file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration (default /etc/emollama/config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long)]
    profile: Option<String>,
    #[arg(long)]
    token: Option<String>,
    /// A folder whose media may be named by path (repeatable).
    #[arg(long = "allowed-dir")]
    allowed_dirs: Vec<PathBuf>,
    #[arg(long)]
    allow_urls: Option<bool>,
    #[arg(long)]
    max_upload_bytes: Option<u64>,
    #[arg(long)]
    max_concurrency: Option<usize>,
    #[arg(long)]
    max_queue: Option<usize>,
    #[arg(long)]
    request_timeout_s: Option<f64>,
    #[arg(long)]
    drain_timeout_s: Option<f64>,
    #[arg(long)]
    upload_dir: Option<PathBuf>,
    #[arg(long)]
    max_new_tokens_limit: Option<usize>,
}

fn serve_config(args: &ServeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<ServeConfig> {
    let mut c = ServeConfig::load(args.config.as_deref())?;
    macro_rules! over {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { c.$field = v; } )* };
    }
    over!(
        listen,
        allow_urls,
        max_upload_bytes,
        max_concurrency,
        max_queue,
        request_timeout_s,
        drain_timeout_s,
        max_new_tokens_limit
    );
    if args.bundle.is_some() {
        c.bundle = args.bundle.clone();
    }
    if args.profile.is_some() {
        c.profile = args.profile.clone();
    }
    if args.token.is_some() {
        c.token = args.token.clone();
    }
    if args.upload_dir.is_some() {
        c.upload_dir = args.upload_dir.clone();
    }
    if !args.allowed_dirs.is_empty() {
        c.allowed_dirs = args.allowed_dirs.clone();
    }
    if ort_library.is_some() {
        c.ort_library = ort_library;
    }
    c.validate()?;
    Ok(c)
}

fn serve(args: ServeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let config = serve_config(&args, ort_library)?;
    let profile = resolve_profile(config.profile.as_deref())?;
    let bundle = bundle_dir(config.bundle.as_deref())?;
    if args.check_config {
        println!("configuration OK: listen {}, bundle {}, profile {}", config.listen, bundle.display(), profile.name);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let host = detect(Path::new("/"), &profiles()?);
        let runtime_config = RuntimeConfig {
            ort_library: config.ort_library.clone(),
            ..RuntimeConfig::from_profile(&profile).with_host(&host)
        };
        let state = std::sync::Arc::new(AppState::new(config)?);
        let build = move || {
            let started = std::time::Instant::now();
            let runtime = Runtime::new(&bundle, runtime_config).map_err(|e| e.to_string())?;
            let m = runtime.bundle().manifest();
            let info = ReadyInfo {
                bundle: m.id.clone(),
                synthetic: m.synthetic,
                profile: profile.name.clone(),
                providers: runtime.providers(),
                power_mode: host.power_mode.clone(),
                warm_up_ms: started.elapsed().as_secs_f64() * 1e3,
            };
            Ok((runtime, info))
        };
        emollama_runtime::serve::serve(state, listener, build).await?;
        anyhow::Ok(())
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TaskArg {
    Emotion,
    Reason,
    Question,
}
#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Full,
    OfficialDemo,
}
#[derive(Clone, Copy, clap::ValueEnum)]
enum PresetArg {
    Eval,
    Demo,
    Fast,
}
#[derive(Clone, Copy, clap::ValueEnum)]
enum LayoutArg {
    Eval,
    Demo,
}

fn transcript_of(args: &AnalyzeArgs) -> anyhow::Result<Option<String>> {
    if let Some(t) = &args.transcript {
        return Ok(Some(t.clone()));
    }
    let file = args.transcript_file.clone().or_else(|| sidecar_subtitles(&args.media));
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("transcript file {}", file.display()))?;
    let is_subtitles = matches!(file.extension().and_then(|e| e.to_str()), Some("srt" | "vtt"));
    Ok(Some(if is_subtitles { subtitles_text(&text) } else { text.split_whitespace().collect::<Vec<_>>().join(" ") }))
}

fn analyze(args: AnalyzeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = bundle_dir(args.bundle.as_deref())?;
    let task = match args.task {
        TaskArg::Emotion => Task::Emotion { six_labels: args.six_labels },
        TaskArg::Reason => Task::Reason { instruction: args.reason_index },
        TaskArg::Question => Task::Question {
            text: args
                .question
                .clone()
                .filter(|q| !q.trim().is_empty())
                .context("--task question needs --question TEXT")?,
        },
    };
    let transcript = transcript_of(&args)?;
    let profile = resolve_profile(args.profile.as_deref())?;
    let host = detect(Path::new("/"), &profiles()?);
    let base = RuntimeConfig::from_profile(&profile).with_host(&host);
    let mut providers = provider_policy(&args.provider)?;
    providers.tensorrt = base.providers.tensorrt.clone();
    let mut config = RuntimeConfig { providers, ort_library, ..base };
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    let runtime = Runtime::new(&dir, config).with_context(|| format!("bundle {}", dir.display()))?;
    let req = AnalyzeRequest {
        task,
        layout: match args.layout {
            LayoutArg::Eval => PromptLayout::Eval,
            LayoutArg::Demo => PromptLayout::Demo,
        },
        transcript: transcript.clone(),
        mode: match args.mode {
            ModeArg::Full => Mode::Full,
            ModeArg::OfficialDemo => Mode::OfficialDemo,
        },
        preset: match args.preset {
            PresetArg::Eval => Preset::Eval,
            PresetArg::Demo => Preset::Demo,
            PresetArg::Fast => Preset::Fast,
        },
        scores: args.scores,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        dump_inputs: args.dump_inputs.clone(),
        ..AnalyzeRequest::new(args.media.clone())
    };
    let json = args.json;
    if !json && transcript.is_none() {
        eprintln!("note: no transcript (--transcript, --transcript-file or a .srt/.vtt beside the video): the prompt's transcript line is left out");
    }
    let result = runtime.analyze(&req, None, |piece| {
        if !json {
            use std::io::Write;
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    if !result.text.is_empty() {
        println!();
    }
    for n in &result.notes {
        eprintln!("note: {n}");
    }
    if let Some(label) = &result.label {
        let p = result
            .label_scores
            .as_ref()
            .and_then(|s| s.get(label))
            .map(|p| format!(" (p = {p:.3})"))
            .unwrap_or_default();
        println!("label: {label}{p}");
    }
    let t = &result.timings_ms;
    let get = |k: &str| t.get(k).copied().unwrap_or(0.0);
    println!(
        "time: {:.0} ms total (media {:.0}, encoders {:.0}, prefill {:.0}, first token {:.0}, {} tokens at {:.1}/s)",
        get("total"),
        get("decode_video") + get("decode_audio") + get("faces"),
        get("global_encoder") + get("local_encoder") + get("temporal_encoder") + get("audio_encoder"),
        get("prefill"),
        get("first_token"),
        result.tokens.generated,
        result.tokens.decode_per_s
    );
    Ok(())
}

fn profiles() -> anyhow::Result<Vec<Profile>> {
    Ok(load_profiles(&profile_dirs())?)
}

/// The named profile, else the detected one.
fn resolve_profile(name: Option<&str>) -> anyhow::Result<Profile> {
    let all = profiles()?;
    let name = match name {
        Some(n) => n.to_string(),
        None => detect(Path::new("/"), &all).profile.unwrap_or_else(|| "x86-cpu".into()),
    };
    Ok(find_profile(&all, &name)?.clone())
}

fn bundle_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (dir, source) = locate_bundle(explicit)?;
    if source == BundleSource::SyntheticFallback {
        eprintln!("warning: no bundle given or installed; using the synthetic bundle at {} (random weights: its answers mean nothing)", dir.display());
    }
    Ok(dir)
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
                eprintln!(
                    "warning: no bundle given or installed; using the synthetic bundle at {} (random weights)",
                    dir.display()
                );
            }
            let report = inspect_bundle(&dir, &provider_policy(&provider)?, cli.ort_library.as_deref())
                .with_context(|| format!("bundle {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Analyze(args) => analyze(args, cli.ort_library)?,
        Command::Serve(args) => serve(args, cli.ort_library)?,
        Command::Profiles { json } => {
            let all = profiles()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<20} {:<44} {:>7} {:>8} {:>9} {:<7} {:<8} {:<9}",
                    "name", "device", "memory", "usable", "bandwidth", "gpu", "llm", "encoders"
                );
                for p in &all {
                    println!(
                        "{:<20} {:<44} {:>5.0}GB {:>6.1}GB {:>5.0}GB/s {:<7} {:<8} {:?}/{:?}",
                        p.name,
                        p.display,
                        p.memory_total_gb,
                        p.usable_headless_gb,
                        p.bandwidth_gb_s,
                        p.gpu_arch,
                        p.defaults.llm_quant,
                        p.defaults.encoder_precision,
                        p.defaults.encoder_residency
                    );
                }
            }
        }
        Command::Doctor { json, root, bundle } => {
            let all = profiles()?;
            let report = doctor(&root, &all, cli.ort_library.as_deref(), bundle.as_deref());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Plan { profile, bundle, json } => {
            let dir = bundle_dir(bundle.as_deref())?;
            let b = emollama_bundle::Bundle::open(&dir)?;
            let all = profiles()?;
            let chosen: Vec<&Profile> = match &profile {
                Some(n) => vec![find_profile(&all, n)?],
                None => all.iter().collect(),
            };
            let plans: Vec<_> = chosen.iter().map(|p| plan(b.manifest(), p)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&plans)?);
            } else {
                for p in &plans {
                    println!("{:<20} {:<13} {}", p.profile, format!("{:?}", p.outcome), p.message);
                }
            }
        }
        Command::Bench { profile, bundle, media, runs, warmup, max_new_tokens, out, json, compare } => {
            let dir = bundle_dir(bundle.as_deref())?;
            let profile = resolve_profile(profile.as_deref())?;
            let media = if media.is_empty() {
                vec![emollama_engines::onnx::library::setup_cache_dir()
                    .join("media/talking-face.mp4")
                    .display()
                    .to_string()]
            } else {
                media
            };
            let host = detect(Path::new("/"), &profiles()?);
            let config = RuntimeConfig {
                ort_library: cli.ort_library.clone(),
                ..RuntimeConfig::from_profile(&profile).with_host(&host)
            };
            let opts =
                BenchOptions { bundle: dir, profile, host, media, runs: runs.max(1), warmup, max_new_tokens, config };
            let exe = std::env::current_exe()?;
            let report = run_bench(&opts, &exe)?;
            let written = write_outputs(&report, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.markdown());
                eprintln!("wrote {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
            }
            if let Some(old) = compare {
                let text = std::fs::read_to_string(&old).with_context(|| format!("reading {}", old.display()))?;
                let old: BenchReport =
                    serde_json::from_str(&text).with_context(|| format!("{} is not a bench.json", old.display()))?;
                eprint!("{}", report.compare(&old));
            }
        }
        Command::Quantize { input, output, r#type, bundle } => {
            let q = QuantType::parse(&r#type)
                .with_context(|| format!("unknown type {type:?}: use f16, q8_0, q4_0 or q4_k_m", type = r#type))?;
            let threads = std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2);
            if bundle {
                let m = emollama_export::requantize_bundle(&input, &output, q, threads)?;
                println!("wrote bundle {} ({}) at {}", m.id, r#type, output.display());
            } else {
                quantize(&input, &output, q, threads)?;
                println!("wrote {}", output.display());
            }
        }
    }
    Ok(())
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
