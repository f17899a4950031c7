//! `emollama quantize`: a GGUF, or a whole bundle with its LLM requantized.

use std::path::PathBuf;

use emollama_bundle::{derive_bundle, Bundle, GgufType, Precision, Role};
use emollama_engines::llm::quantize;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// A GGUF file, or with --bundle the bundle folder.
    input: PathBuf,
    output: PathBuf,
    /// f32, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, iq4_xs, q3_k_m.
    r#type: GgufType,
    #[arg(long)]
    bundle: bool,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2);
    let t = args.r#type;
    if args.bundle {
        let src = Bundle::open(&args.input)?;
        let m = derive_bundle::<anyhow::Error>(
            &src,
            &args.output,
            &Role::Llm,
            &format!("llm-{t}.gguf"),
            t.name(),
            |from, to| {
                quantize(from, to, t, threads)?;
                Ok(Precision::Gguf(t))
            },
        )?;
        println!("wrote bundle {} ({t}) at {}", m.id, args.output.display());
    } else {
        quantize(&args.input, &args.output, t, threads)?;
        println!("wrote {}", args.output.display());
    }
    Ok(())
}
