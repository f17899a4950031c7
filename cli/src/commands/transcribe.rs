//! `emollama transcribe`: what is said in a clip, heard by the bundle's Whisper engines
//! (the first 30 s), printed alone; only the speech recognition engines are loaded.

use std::path::PathBuf;

use anyhow::Context;
use emollama_bundle::Bundle;
use emollama_devices::AsrPlacement;
use emollama_engines::onnx::{init_runtime, EngineOptions};
use emollama_engines::CancelToken;
use emollama_media::{read_clip, ClipRequest, MediaError, MediaLimits, SourceOptions};
use emollama_runtime::asr::{AsrTask, Transcriber};

use crate::args::{BundleArgs, EngineArgs};

#[derive(clap::Args)]
pub struct TranscribeArgs {
    /// Audio or video file, URL, or camera device.
    media: String,
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    engines: EngineArgs,
    /// translate: the words in English (what the prompt's line takes); transcribe: as spoken.
    #[arg(long, value_enum, default_value = "translate")]
    task: AsrTask,
    /// The spoken language (`en`, `zh`, …; default: detected).
    #[arg(long)]
    language: Option<String>,
    /// One JSON object (text, language, task, decoder ids, ms) instead of the text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TranscribeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = args.bundle.dir()?;
    let bundle = Bundle::open(&dir)?;
    bundle.verify_files()?;
    let rt = init_runtime(ort_library.as_deref())?;
    let opts = EngineOptions {
        intra_threads: args.engines.threads.unwrap_or(0),
        policy: args.engines.provider.policy(),
        model_sha256: String::new(),
    };
    let asr = Transcriber::load(&bundle, rt, &opts, AsrPlacement::Resident)?.with_context(|| {
        format!("bundle {} has no speech recognition engines (emollama_export.whisper adds them)", dir.display())
    })?;
    let cancel = CancelToken::new();
    let source = SourceOptions::request(MediaLimits::default(), asr.info().sample_rate);
    let clip = read_clip(&args.media, &source, &ClipRequest { frames: Vec::new(), audio: true }, &cancel)?;
    let samples = clip.audio.ok_or_else(|| MediaError::NoAudio { source_name: args.media.clone() })?;
    let heard = asr.transcribe(&samples, args.task, args.language.as_deref(), &cancel)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&heard)?);
    } else {
        println!("{}", heard.text);
    }
    Ok(())
}
