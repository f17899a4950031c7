//! `emollama analyze`: one video through the pipeline, streamed text or one JSON object.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use emollama_runtime::asr::AsrTask;
use emollama_runtime::observer::InputDump;
use emollama_runtime::prompt::EvalSet;
use emollama_runtime::transcript::{sidecar_subtitles, subtitles_text};
use emollama_runtime::{AnalyzeOptions, Layout, Mode, Preset, Stage, TaskKind, TranscriptReport};

use crate::args::PipelineArgs;

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Video file, URL, or camera device (/dev/video0).
    media: String,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value = "emotion")]
    task: TaskKind,
    /// The question, with --task question.
    #[arg(long)]
    question: Option<String>,
    /// The MER2023/2024 six-label instruction instead of the nine-label one.
    #[arg(long)]
    six_labels: bool,
    /// Which instruction of the reasoning pool (0-4), with --task reason.
    #[arg(long, default_value_t = 0)]
    reason_index: u32,
    /// The Emotion-LLaMA-v2 eval set whose prompt --task eval-set asks with.
    #[arg(long, value_enum)]
    eval_set: Option<EvalSet>,
    /// What the person says (English), for the prompt's transcript line; `none`: no
    /// line and no speech recognition (default: the bundle's speech recognition hears it).
    #[arg(long, conflicts_with = "transcript_file")]
    transcript: Option<String>,
    /// Speech recognition: translate to English (the default) or transcribe as spoken.
    #[arg(long, value_enum)]
    asr_task: Option<AsrTask>,
    /// The spoken language for speech recognition (`en`, `zh`, …; default: detected).
    #[arg(long)]
    asr_language: Option<String>,
    /// A text, .srt or .vtt file with the transcript (default: MEDIA's .srt/.vtt, if any).
    #[arg(long)]
    transcript_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "full")]
    mode: Mode,
    /// Generation settings: the manifest's eval or demo preset, or fast (label scores only).
    #[arg(long, value_enum, default_value = "eval")]
    preset: Preset,
    /// The official prompt to reproduce: eval (benchmark) or demo (two-turn Gradio prompt).
    #[arg(long, value_enum, default_value = "eval")]
    layout: Layout,
    /// Label probabilities for the tasks with labels (emotion; v2's sentiment and intent; on
    /// by default; --scores false turns them off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scores: bool,
    #[arg(long)]
    max_new_tokens: Option<u32>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pre-extracted MAE features of the faces (.npy, float32 [C] or [1, C], as the
    /// official `mae_340_UTT/<clip>.npy`): used instead of running the local encoder.
    #[arg(long, value_name = "NPY")]
    local_features: Option<PathBuf>,
    /// Pre-extracted VideoMAE features (`maeV_399_UTT/<clip>.npy`), instead of the temporal encoder.
    #[arg(long, value_name = "NPY")]
    temporal_features: Option<PathBuf>,
    /// Pre-extracted HuBERT features (`HL-UTT/<clip>.npy`), instead of the audio encoder.
    #[arg(long, value_name = "NPY")]
    audio_features: Option<PathBuf>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the preprocessed inputs and prompt ids to this folder (reference checks).
    #[arg(long, hide = true)]
    dump_inputs: Option<PathBuf>,
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

pub fn run(args: AnalyzeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let transcript = transcript_of(&args)?;
    // The same options, and the same rules, as an HTTP request.
    let options = AnalyzeOptions {
        task: Some(args.task),
        question: args.question.clone(),
        transcript: transcript.clone(),
        asr_task: args.asr_task,
        asr_language: args.asr_language.clone(),
        mode: Some(args.mode),
        preset: Some(args.preset),
        layout: Some(args.layout),
        six_labels: Some(args.six_labels),
        reason_index: Some(args.reason_index),
        eval_set: args.eval_set,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        seed: Some(args.seed),
        scores: Some(args.scores),
        local_features: args.local_features.as_ref().map(|p| p.to_string_lossy().into_owned()),
        temporal_features: args.temporal_features.as_ref().map(|p| p.to_string_lossy().into_owned()),
        audio_features: args.audio_features.as_ref().map(|p| p.to_string_lossy().into_owned()),
        ..AnalyzeOptions::default()
    };
    let req = options.into_request(args.media.clone(), u32::MAX)?;
    let pipeline = args.pipeline.load(ort_library)?;
    pipeline.check_features(&req.features)?;
    let json = args.json;
    let mut session = pipeline.session(&req, Default::default())?;
    if let Some(dir) = &args.dump_inputs {
        session = session.observe(InputDump::new(dir)?);
    }
    let result = session.run(|piece| {
        if !json {
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
    if let Some(TranscriptReport::Asr { text, language, task }) = &result.transcript {
        let ms = result.timings_ms.get(&Stage::Asr).copied().unwrap_or(0.0);
        println!("transcript (speech recognition, {language}, {task:?}, {ms:.0} ms): {text}");
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
    let get = |k: Stage| t.get(&k).copied().unwrap_or(0.0);
    let sum = |f: fn(Stage) -> bool| t.iter().filter(|(k, _)| f(**k)).map(|(_, v)| v).sum::<f64>();
    println!(
        "time: {:.0} ms total (media {:.0}, encoders {:.0}, prefill {:.0}, first token {:.0}, {} tokens at {:.1}/s)",
        get(Stage::Total),
        sum(Stage::is_media),
        sum(Stage::is_encoder),
        get(Stage::Prefill),
        get(Stage::FirstToken),
        result.tokens.generated,
        result.tokens.decode_per_s
    );
    Ok(())
}
