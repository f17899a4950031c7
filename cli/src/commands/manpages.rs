//! `emollama manpages DIR` (hidden): the man pages of every command, from the CLI's own
//! definition, so they can never disagree with `--help`. `scripts/package` ships them.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ManpagesArgs {
    /// Folder to write emollama.1 and emollama-COMMAND.1 into.
    out: PathBuf,
}

pub fn run(args: ManpagesArgs, cli: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cli = cli.version(env!("CARGO_PKG_VERSION"));
    let mut pages = vec![(cli.get_name().to_string(), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{}-{}", cli.get_name(), sub.get_name());
        // The page's name and its synopsis say `emollama-serve` / `emollama serve`.
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("{} {}", cli.get_name(), sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        pages.push((name, page));
    }
    for (name, command) in pages {
        let path = args.out.join(format!("{name}.1"));
        let mut roff = Vec::new();
        clap_mangen::Man::new(command).render(&mut roff)?;
        let partial = path.with_extension("1.partial");
        std::fs::write(&partial, roff).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
