//! `emollama profiles`: the device profiles, built in and the user's.

use crate::args::profiles;

#[derive(clap::Args)]
pub struct ProfilesArgs {
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProfilesArgs) -> anyhow::Result<()> {
    let all = profiles()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<44} {:>7} {:>8} {:>9} {:<7} {:<8} {:<9}",
        "name", "device", "memory", "usable", "bandwidth", "gpu", "llm", "encoders"
    );
    for p in &all {
        println!(
            "{:<20} {:<44} {:>5.0}GB {:>6.1}GB {:>5.0}GB/s {:<7} {:<8} {}/{:?}",
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
    Ok(())
}
