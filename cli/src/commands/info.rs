//! `emollama info`: verify a bundle and load every engine for real.

use std::path::PathBuf;

use anyhow::Context;
use emollama_commands::info::inspect_bundle;

use crate::args::{BundleArgs, ProviderArg};

#[derive(clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    /// Encoder execution provider.
    #[arg(long, value_enum, default_value = "auto")]
    provider: ProviderArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = args.bundle.dir()?;
    let report = inspect_bundle(&dir, &args.provider.policy(), ort_library.as_deref())
        .with_context(|| format!("bundle {}", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
