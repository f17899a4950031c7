//! `emollama install-bundle`: put a bundle where the package's service finds it.

use std::path::PathBuf;

use anyhow::Context;
use emollama_bundle::install_bundle;
use emollama_bundle::locations::INSTALLED_BUNDLE;

#[derive(clap::Args)]
pub struct InstallBundleArgs {
    /// The bundle folder to install (made by ./scripts/export, or `emollama quantize --bundle`).
    bundle: PathBuf,
    /// Where to install it: absent, an empty folder, or an installed bundle.
    #[arg(long, default_value = INSTALLED_BUNDLE)]
    to: PathBuf,
    /// Replace whatever --to holds (a file, a folder that is not a bundle).
    #[arg(long)]
    force: bool,
}

pub fn run(args: InstallBundleArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let m = install_bundle(&args.bundle, &args.to, args.force)
        .with_context(|| format!("installing {} as {}", args.bundle.display(), args.to.display()))?;
    let bytes: u64 = m.files.iter().map(|f| f.size).sum();
    println!(
        "installed bundle {} at {}: {} files, {:.2} GB, every sha256 checked ({:.1} s)",
        m.id,
        args.to.display(),
        m.files.len(),
        bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    if args.to == std::path::Path::new(INSTALLED_BUNDLE) {
        println!("restart the service to load it: sudo systemctl restart emollama");
    }
    Ok(())
}
