//! `emollama doctor`: this machine, its libraries and providers, problems and fixes.

use std::path::PathBuf;

use emollama_commands::doctor::doctor;

use crate::args::profiles;

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[arg(long)]
    json: bool,
    /// Read /proc, /etc and /sys under this folder instead of / (recorded boards).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Also plan this bundle on the detected profile.
    #[arg(long)]
    bundle: Option<PathBuf>,
}

pub fn run(args: DoctorArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let report = doctor(&args.root, &profiles()?, ort_library.as_deref(), args.bundle.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
