//! `emollama eval`: a labelled set through the pipeline as the official MER2023 protocol
//! runs it, with a progress bar, resumable; or `--compare A B` of two runs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use emollama_commands::eval::run::{read_rows, results_path};
use emollama_commands::eval::{
    run_eval, Comparison, Dataset, DatasetPaths, EvalReport, EvalSettings, LabelSet, Progress, RESULTS,
};
use emollama_runtime::prompt::EvalSet;
use emollama_runtime::{Mode, Preset};

use crate::args::PipelineArgs;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The list file, `name num_frames label [valence]` per line (as relative_test3_NCEV.txt).
    #[arg(long, required_unless_present = "compare")]
    list: Option<PathBuf>,
    /// The videos, `<name>.mp4` (or .avi, .mkv, .mov, .webm, .flv): EVA's first frame, and
    /// the other encoders wherever no features are given.
    #[arg(long, required_unless_present = "compare")]
    videos: Option<PathBuf>,
    /// Folder of pre-extracted MAE features, `<name>.npy` (the official mae_340_UTT).
    #[arg(long, value_name = "DIR")]
    local_features: Option<PathBuf>,
    /// Folder of pre-extracted VideoMAE features (the official maeV_399_UTT).
    #[arg(long, value_name = "DIR")]
    temporal_features: Option<PathBuf>,
    /// Folder of pre-extracted HuBERT features (the official HL-UTT).
    #[arg(long, value_name = "DIR")]
    audio_features: Option<PathBuf>,
    /// Transcript CSV with `name` and `sentence` (or `sentence_en`) columns, as the official
    /// transcription_en_all.csv, for the prompt's transcript line.
    #[arg(long, value_name = "CSV")]
    transcripts: Option<PathBuf>,
    /// The transcript line from the bundle's speech recognition instead of a CSV (compare
    /// with a --transcripts run: `eval --compare` says what recognition costs).
    #[arg(long, conflicts_with = "transcripts")]
    asr: bool,
    /// The instruction's labels (the official MER2023 eval asks with nine).
    #[arg(long, value_enum, default_value = "nine")]
    instruction: LabelSet,
    /// The labels scored and allowed in the list (MER2023/2024: six, any other answer is
    /// neutral; dfew: DFEW's seven, reported with UAR and WAR).
    #[arg(long, value_enum, default_value = "six")]
    scoring: LabelSet,
    /// Emotion-LLaMA-v2: the eval set the list belongs to (mer_eval_datasets.py): its
    /// instruction and labels, and its scoring script's rule (instead of --instruction and
    /// --scoring). A multi-label set's list holds `a,b` labels.
    #[arg(long, value_enum)]
    eval_set: Option<EvalSet>,
    /// eval: greedy answers as eval_emotion.py (label scores too); fast: the label scores
    /// alone, about one prefill per clip.
    #[arg(long, value_enum, default_value = "eval")]
    preset: Preset,
    #[arg(long, value_enum, default_value = "full")]
    mode: Mode,
    /// Output folder: results.jsonl (resumed when present), eval.md, eval.json, confusion.svg.
    #[arg(long, required_unless_present = "compare")]
    out: Option<PathBuf>,
    /// Only the first N clips of the list.
    #[arg(long)]
    limit: Option<usize>,
    /// Replace the results in --out instead of resuming them.
    #[arg(long)]
    restart: bool,
    /// Compare two runs (their --out folders or results.jsonl files) instead of running one.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["list", "videos", "out"])]
    compare: Option<Vec<PathBuf>>,
    /// Print the report (or the comparison) as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

pub fn run(args: EvalArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(runs) = &args.compare {
        return compare(&runs[0], &runs[1], args.json);
    }
    let out = args.out.clone().expect("clap requires --out");
    let paths = DatasetPaths {
        list: args.list.clone().expect("clap requires --list"),
        videos: args.videos.clone().expect("clap requires --videos"),
        local_features: args.local_features.clone(),
        temporal_features: args.temporal_features.clone(),
        audio_features: args.audio_features.clone(),
        transcripts: args.transcripts.clone(),
    };
    for dir in [
        Some(&paths.videos),
        paths.local_features.as_ref(),
        paths.temporal_features.as_ref(),
        paths.audio_features.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        anyhow::ensure!(dir.is_dir(), "{} is not a folder", dir.display());
    }
    let settings = EvalSettings {
        preset: args.preset,
        mode: args.mode,
        instruction: args.instruction,
        scoring: args.scoring,
        asr: args.asr,
        eval_set: args.eval_set,
    };
    settings.check()?;
    // The list is checked before the model loads: a wrong line fails at once.
    let dataset = Dataset::open(paths, &settings, args.limit)?;
    if args.restart {
        match std::fs::remove_file(out.join(RESULTS)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", out.join(RESULTS).display()))
            }
            _ => {}
        }
    }
    let pipeline = args.pipeline.load(ort_library)?;
    settings.check_pipeline(&pipeline)?;
    let bar = Bar::new();
    let rows = run_eval(&pipeline, &dataset, settings, &out, &Default::default(), |p| bar.update(p))?;
    bar.finish();
    let report = EvalReport::new(&dataset.clips, rows, pipeline.manifest().synthetic)?;
    report.write(&out)?;
    // Metrics over no clip are not metrics (a weighted F1 of 0.0000 would read as one).
    if report.clips_scored == 0 && report.clips_pending == 0 {
        anyhow::bail!(
            "no clip was scored: {} of {} skipped (see {}); the report holds no metric",
            report.skipped.len(),
            report.clips_listed,
            out.join("eval.md").display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let (o, r) = (&report.official, &report.robust);
    println!(
        "scored {} of {} clips ({} skipped, {} pending): weighted F1 {:.4} (official extraction), {:.4} (robust); accuracy {:.4}; UAR {:.4}",
        report.clips_scored, report.clips_listed, report.skipped.len(), report.clips_pending, o.weighted_f1, r.weighted_f1, o.accuracy, o.uar
    );
    if let Some(m) = &report.multi_label {
        println!(
            "multi-label (official): F1 micro {:.4}, F1 samples {:.4}, Jaccard {:.4}, mAP {:.4}",
            m.official.f1_micro, m.official.f1_samples, m.official.jaccard, m.official.map
        );
    }
    if let Some(a) = &report.scores_vs_answer {
        println!("label scores agree with the generated label on {:.1} % of clips", 100.0 * a.rate);
    }
    if let Some(s) = &report.speed {
        println!("median clip {:.0} ms ({:.2} clips/s)", s.median_clip_ms, s.clips_per_s);
    }
    if !report.skipped.is_empty() {
        eprintln!(
            "warning: {} clips skipped (not in the metrics); see {}",
            report.skipped.len(),
            out.join("eval.md").display()
        );
    }
    if report.synthetic {
        eprintln!("note: synthetic bundle (random weights): the labels mean nothing");
    }
    println!("wrote {}", out.join("eval.md").display());
    Ok(())
}

fn compare(a: &std::path::Path, b: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        let file = results_path(p);
        read_rows(&file, false).with_context(|| format!("reading {}", file.display()))
    };
    let c = Comparison::new(read(a)?, read(b)?)
        .with_context(|| format!("no result rows in {} or {}", a.display(), b.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", c.render());
    }
    Ok(())
}

/// A progress bar on a terminal; a line per clip otherwise (journald, CI logs).
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template("{bar:32.cyan/blue} {pos}/{len} clips  {msg}")
            .expect("a valid template");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(500));
        Bar(Some(bar))
    }

    fn update(&self, p: &Progress<'_>) {
        let eta = p.eta_s().map_or("-".into(), |s| format!("{:.0}s", s.round()));
        let label = p.row.label.as_deref().unwrap_or("skipped");
        let msg =
            format!("{:.2} clips/s  ETA {eta}  {} skipped  last: {} -> {label}", p.clips_per_s(), p.failed, p.row.name);
        match &self.0 {
            Some(bar) => {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                bar.set_message(msg);
            }
            None => eprintln!("eval: {}/{} clips  {msg}", p.done, p.total),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}
