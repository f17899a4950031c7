//! `emollama bench`: cold start, warm stages, decode against raw llama.cpp.

use std::path::PathBuf;

use anyhow::Context;
use emollama_bundle::locations::sample_media_dir;
use emollama_commands::bench::{run_bench, write_outputs, BenchOptions, BenchReport};
use emollama_runtime::LoadOptions;

use crate::args::{host, BundleArgs, ProfileArgs};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    #[command(flatten)]
    bundle: BundleArgs,
    /// Media to analyze (default: the talking-face sample from setup).
    #[arg(long)]
    media: Vec<String>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: u32,
    /// Folder for bench.md, bench.json and bench.svg.
    #[arg(long, default_value = "emollama-bench")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
    /// An earlier bench.json: print the differences.
    #[arg(long)]
    compare: Option<PathBuf>,
}

pub fn run(args: BenchArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let media = if args.media.is_empty() {
        vec![sample_media_dir().join("talking-face.mp4").display().to_string()]
    } else {
        args.media
    };
    let host = host()?;
    let opts = BenchOptions {
        bundle: args.bundle.dir()?,
        profile: args.profile.resolve()?,
        host: host.clone(),
        media,
        runs: args.runs.max(1),
        warmup: args.warmup,
        max_new_tokens: args.max_new_tokens,
        load: LoadOptions { providers: None, ort_library, host: Some(host), ..Default::default() },
    };
    let report = run_bench(&opts, &std::env::current_exe()?)?;
    let written = write_outputs(&report, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
        eprintln!("wrote {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    if let Some(old) = args.compare {
        let text = std::fs::read_to_string(&old).with_context(|| format!("reading {}", old.display()))?;
        let old: BenchReport =
            serde_json::from_str(&text).with_context(|| format!("{} is not a bench.json", old.display()))?;
        eprint!("{}", report.compare(&old));
    }
    Ok(())
}
