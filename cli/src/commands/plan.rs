//! `emollama plan`: does a bundle fit a device, with which settings.

use emollama_bundle::Bundle;
use emollama_devices::{find_profile, plan, Profile};

use crate::args::{profiles, BundleArgs};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// A profile name; default: every profile.
    #[arg(long)]
    profile: Option<String>,
    #[command(flatten)]
    bundle: BundleArgs,
    #[arg(long)]
    json: bool,
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let b = Bundle::open(&args.bundle.dir()?)?;
    let all = profiles()?;
    let chosen: Vec<&Profile> = match &args.profile {
        Some(n) => vec![find_profile(&all, n)?],
        None => all.iter().collect(),
    };
    let plans: Vec<_> = chosen.iter().map(|p| plan(b.manifest(), p)).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plans)?);
        return Ok(());
    }
    for p in &plans {
        let s = &p.settings;
        println!("{:<20} {:<13} {}", p.profile, format!("{:?}", p.outcome), p.message);
        println!(
            "{:<20} runs with: LLM {}, n_ctx {}, n_batch {}, KV {}, encoders {} {:?}, {} threads, {} face detectors",
            "", s.llm_type, s.n_ctx, s.n_batch, s.kv_type, s.encoder_precision, s.encoders, s.threads, s.face_detectors
        );
        if let Some(placement) = s.asr {
            let (bytes, host) = match p.parts.asr_host {
                0 => (p.parts.asr, ""),
                b => (b, " of host memory, outside the GPU's"),
            };
            println!("{:<20} speech recognition {placement}: {:.2} GB{host}", "", bytes as f64 / 1e9);
        }
        if let Some(t) = p.requantize(b.manifest()) {
            println!("{:<20} first: emollama quantize --bundle IN OUT {t}", "");
        }
    }
    Ok(())
}
