//! `emollama dump-inputs`: the encoders' inputs for many clips in one process, the
//! pipeline loaded once: what `analyze --dump-inputs` writes for one clip, without the
//! LLM's prefill. The calibration inputs of `emollama_export.quantize_encoders`.

use std::path::PathBuf;

use anyhow::Context;
use emollama_runtime::observer::InputDump;
use emollama_runtime::request::AsrRequest;
use emollama_runtime::{AnalyzeRequest, Preset};

use crate::args::PipelineArgs;

#[derive(clap::Args)]
pub struct DumpInputsArgs {
    /// Clips: files or URLs, in order.
    #[arg(required = true)]
    media: Vec<String>,
    /// The output folder: `0000/`, `0001/`, … one per clip in order, each as
    /// `analyze --dump-inputs` writes it (the tensors, `index.json` with the prompt ids).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

pub fn run(args: DumpInputsArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let pipeline = args.pipeline.load(ort_library)?;
    for (i, media) in args.media.iter().enumerate() {
        let dir = args.out.join(format!("{i:04}"));
        // No speech recognition and no transcript: the encoders' inputs do not depend on them.
        let req = AnalyzeRequest {
            preset: Preset::Fast,
            asr: AsrRequest { enabled: false, ..AsrRequest::default() },
            ..AnalyzeRequest::new(media.clone())
        };
        let mut session = pipeline.session(&req, Default::default())?.observe(InputDump::new(&dir)?);
        session.encode().and_then(|()| session.tokenize_prompt()).with_context(|| media.clone())?;
        println!("{}", dir.display());
    }
    Ok(())
}
