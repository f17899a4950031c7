//! `emollama serve`: the HTTP service, configured by a TOML file and flags.

use std::path::PathBuf;

use anyhow::Context;
use emollama_bundle::locations::locate_bundle;
use emollama_runtime::{LoadOptions, Pipeline};
use emollama_serve::{AppState, ReadyInfo, ServeConfig};

use crate::args::{host, ProfileArgs};

/// Every configuration key, as a flag overriding the file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration (default /etc/emollama/config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long)]
    profile: Option<String>,
    #[arg(long)]
    token: Option<String>,
    /// A folder whose media may be named by path (repeatable).
    #[arg(long = "allowed-dir")]
    allowed_dirs: Vec<PathBuf>,
    #[arg(long)]
    allow_urls: Option<bool>,
    /// A host URLs may name: host, host:port or scheme://host[:port] (repeatable).
    #[arg(long = "allowed-url-host")]
    allowed_url_hosts: Vec<String>,
    #[arg(long)]
    max_upload_bytes: Option<u64>,
    #[arg(long)]
    max_json_bytes: Option<u64>,
    #[arg(long)]
    max_concurrency: Option<usize>,
    #[arg(long)]
    max_queue: Option<usize>,
    #[arg(long)]
    max_connections: Option<usize>,
    #[arg(long)]
    header_timeout_s: Option<f64>,
    #[arg(long)]
    body_timeout_s: Option<f64>,
    #[arg(long)]
    body_min_rate: Option<u64>,
    #[arg(long)]
    request_timeout_s: Option<f64>,
    #[arg(long)]
    drain_timeout_s: Option<f64>,
    #[arg(long)]
    upload_dir: Option<PathBuf>,
    #[arg(long)]
    max_new_tokens_limit: Option<usize>,
    #[arg(long)]
    min_face: Option<f32>,
    #[arg(long)]
    max_connections_per_peer: Option<usize>,
    #[arg(long)]
    max_event_streams: Option<usize>,
    #[arg(long)]
    event_stream_max_s: Option<f64>,
    /// The web console at `/` (true/false).
    #[arg(long)]
    console: Option<bool>,
}

fn serve_config(args: &ServeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<ServeConfig> {
    let mut c = ServeConfig::load(args.config.as_deref())?;
    macro_rules! over {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { c.$field = v; } )* };
    }
    over!(
        listen,
        allow_urls,
        max_upload_bytes,
        max_json_bytes,
        max_concurrency,
        max_queue,
        max_connections,
        header_timeout_s,
        body_timeout_s,
        body_min_rate,
        request_timeout_s,
        drain_timeout_s,
        max_new_tokens_limit,
        min_face,
        max_connections_per_peer,
        max_event_streams,
        event_stream_max_s,
        console
    );
    macro_rules! over_opt {
        ($($field:ident),*) => { $( if args.$field.is_some() { c.$field = args.$field.clone(); } )* };
    }
    over_opt!(bundle, profile, token, upload_dir);
    if !args.allowed_dirs.is_empty() {
        c.allowed_dirs = args.allowed_dirs.clone();
    }
    if !args.allowed_url_hosts.is_empty() {
        c.allowed_url_hosts = args.allowed_url_hosts.clone();
    }
    if ort_library.is_some() {
        c.ort_library = ort_library;
    }
    c.validate()?;
    Ok(c)
}

pub fn run(args: ServeArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    emollama_serve::memory::configure_allocator();
    let config = serve_config(&args, ort_library)?;
    let profile = ProfileArgs { profile: config.profile.clone() }.resolve()?;
    let warnings = config.warnings();
    if args.check_config {
        // A freshly installed package has no bundle yet: that is a state to report, not
        // an error in the configuration; a bundle the configuration names must be there.
        let bundle = match locate_bundle(config.bundle.as_deref()) {
            Ok((dir, _)) => {
                emollama_bundle::Bundle::open(&dir).with_context(|| format!("bundle = {}", dir.display()))?;
                dir.display().to_string()
            }
            Err(e) if config.bundle.is_none() => format!("none yet ({e})"),
            Err(e) => anyhow::bail!(
                "invalid configuration: bundle = {}: {e}",
                config.bundle.as_ref().expect("named").display()
            ),
        };
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "configuration OK: listen {}, bundle {bundle}, profile {}, uploads in {}",
            config.listen,
            profile.name,
            config.upload_parent().display()
        );
        return Ok(());
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let (bundle, _) = locate_bundle(config.bundle.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let code = rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let host = host()?;
        let state = std::sync::Arc::new(AppState::new(config, listener.local_addr()?)?);
        let load = LoadOptions {
            providers: None,
            ort_library: state.config.ort_library.clone(),
            host: Some(host.clone()),
            scratch_dir: Some(state.uploads.path().to_path_buf()),
            faces: Some(state.config.face_search()),
        };
        let build = move || {
            let started = std::time::Instant::now();
            let pipeline = Pipeline::planned(&bundle, &profile, load).map_err(|e| e.to_string())?;
            let m = pipeline.manifest();
            let info = ReadyInfo {
                bundle: m.id.clone(),
                model: m.model,
                synthetic: m.synthetic,
                profile: profile.name.clone(),
                providers: pipeline.providers(),
                fallbacks: pipeline.fallbacks().to_vec(),
                power_mode: host.power_mode.clone(),
                warm_up_ms: started.elapsed().as_secs_f64() * 1e3,
                plan: pipeline.plan().and_then(|p| serde_json::to_value(p).ok()),
            };
            Ok((pipeline, info))
        };
        anyhow::Ok(emollama_serve::serve(state, listener, build).await?)
    })?;
    // Blocking threads may still hold cancelled work: do not wait for them (the upload
    // folder is already removed), and leave without running the engine libraries'
    // destructors under them.
    rt.shutdown_background();
    emollama_serve::shutdown::exit_now(code)
}
