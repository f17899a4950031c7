//! `emollama bench`: cold start and warm runs of the whole pipeline on one device
//! profile, per-stage percentiles, decode against the profile's bandwidth ceiling and
//! against a raw llama.cpp loop on the same GGUF, as Markdown, JSON and an SVG chart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use emollama_devices::{HostInfo, Profile};
use emollama_engines::llm::{
    raw_greedy_decode, ContextParams, GenerateOptions, LlmContext, LlmModel, ModelParams, Sampler, SamplingParams,
    Segment,
};
use serde::{Deserialize, Serialize};

use crate::CommandError;
use emollama_runtime::pipeline::{LoadOptions, Pipeline};
use emollama_runtime::request::AnalyzeRequest;
use emollama_runtime::stage::Stage;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    pub fn of(v: &[f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((q * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
        Self { p50: at(0.5), p90: at(0.9), p99: at(0.99) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawComparison {
    pub raw_llama_cpp_tok_s: f64,
    pub emollama_tok_s: f64,
    /// emollama / raw: 1.0 means no overhead.
    pub ratio: f64,
    pub tokens: usize,
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub profile: String,
    pub device: String,
    pub board: Option<String>,
    pub power_mode: Option<String>,
    pub l4t: Option<String>,
    pub jetpack: Option<String>,
    pub emollama_version: String,
    pub git_revision: String,
    pub onnxruntime: String,
    pub llama_cpp_system: String,
    pub bundle: String,
    pub synthetic_bundle: bool,
    pub media: Vec<String>,
    pub runs: usize,
    pub warmup: usize,
    pub providers: BTreeMap<String, String>,
    /// Process start → first token of a fresh `emollama analyze` process.
    pub cold_start_ms: f64,
    pub stages_ms: BTreeMap<Stage, Percentiles>,
    pub time_to_first_token_ms: Percentiles,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub peak_rss_mb: f64,
    /// From tegrastats on a Jetson (RAM used, GPU load, VDD_IN power), else None.
    pub tegrastats: Option<String>,
    pub bandwidth_gb_s: f64,
    pub decode_ceiling_tok_s: f64,
    pub decode_pct_of_ceiling: f64,
    pub raw_llama_cpp: RawComparison,
}

pub struct BenchOptions {
    pub bundle: PathBuf,
    pub profile: Profile,
    pub host: HostInfo,
    pub media: Vec<String>,
    pub runs: usize,
    pub warmup: usize,
    pub max_new_tokens: u32,
    /// How the pipeline loads (its settings come from the profile's plan).
    pub load: LoadOptions,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One line of tegrastats, when the tool exists (Jetson only).
fn tegrastats_sample() -> Option<String> {
    let mut child =
        Command::new("tegrastats").args(["--interval", "200"]).stdout(std::process::Stdio::piped()).spawn().ok()?;
    let mut line = String::new();
    let out = child.stdout.take()?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).ok()?;
    let _ = child.kill();
    let _ = child.wait();
    Some(line.trim().to_string()).filter(|l| !l.is_empty())
}

/// Run the benchmark. `cold_start_cmd`: the `emollama` executable for the cold run.
pub fn run_bench(opts: &BenchOptions, cold_start_exe: &Path) -> Result<BenchReport, CommandError> {
    let media0 = opts.media.first().cloned().unwrap_or_default();
    // Cold start: a fresh process, from spawn to its exit after the first token.
    let t = Instant::now();
    let out = Command::new(cold_start_exe)
        .args(["analyze", &media0, "--json", "--max-new-tokens", "1", "--profile", &opts.profile.name, "--bundle"])
        .arg(&opts.bundle)
        .output()
        .map_err(|e| CommandError::Io { path: cold_start_exe.into(), source: e })?;
    let cold_start_ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(CommandError::Io {
            path: cold_start_exe.into(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }

    let rt = Pipeline::planned(&opts.bundle, &opts.profile, opts.load.clone())?;
    let config = rt.config().clone();
    let mut stages: BTreeMap<Stage, Vec<f64>> = BTreeMap::new();
    let (mut ttft, mut prefill_rates, mut decode_rates) = (Vec::new(), Vec::new(), Vec::new());
    for media in &opts.media {
        let req = AnalyzeRequest { max_new_tokens: Some(opts.max_new_tokens), ..AnalyzeRequest::new(media.clone()) };
        for i in 0..opts.warmup + opts.runs {
            let r = rt.session(&req, Default::default())?.run(|_| {})?;
            if i < opts.warmup {
                continue;
            }
            for (k, v) in &r.timings_ms {
                stages.entry(*k).or_default().push(*v);
            }
            ttft.push(r.timings_ms.get(&Stage::FirstToken).copied().unwrap_or(0.0));
            if let Some(p) = r.timings_ms.get(&Stage::Prefill).filter(|p| **p > 0.0) {
                prefill_rates.push(r.tokens.prompt as f64 * 1e3 / p);
            }
            decode_rates.push(r.tokens.decode_per_s);
        }
    }
    let tegrastats = tegrastats_sample();

    // Decode: the wrapper against a raw llama.cpp loop on the same GGUF and threads.
    let llm_entry = rt.bundle().required(&emollama_bundle::Role::Llm)?;
    let model = std::sync::Arc::new(LlmModel::load(
        &rt.bundle().path_of(llm_entry),
        &ModelParams { n_gpu_layers: config.n_gpu_layers, use_mmap: true },
    )?);
    let params = ContextParams { n_ctx: 1024.min(config.n_ctx), ..config.context_params() };
    let prompt = model.tokenize(
        "<s>[INST] The person in video says: we made it.  [emotion] Please determine the emotion. [/INST]",
        true,
        true,
    )?;
    let n = 64;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs.max(3) {
        raw.push(raw_greedy_decode(&model, &params, &prompt, n)?.0);
        let mut ctx = LlmContext::new(model.clone(), params.clone())?;
        ctx.prefill(&[Segment::Tokens(&prompt)], false)?;
        let g = ctx.generate(
            &mut Sampler::new(SamplingParams::greedy())?,
            &GenerateOptions { max_new_tokens: n, stop_strings: vec![] },
            None,
            |_| std::ops::ControlFlow::Continue(()),
        )?;
        ours.push(g.decode_per_s());
    }
    let (raw_tok_s, our_tok_s) = (Percentiles::of(&raw).p50, Percentiles::of(&ours).p50);

    let m = rt.bundle().manifest();
    // Bandwidth ceiling: every decoded token reads all weights plus the KV cache so far.
    let kv_per_token = 2.0 * f64::from(m.llm.n_layer) * f64::from(m.llm.n_head_kv * m.llm.head_dim) * 2.0;
    let ctx_tokens = 320.0 + opts.max_new_tokens as f64 / 2.0;
    let bytes_per_token = model.size() as f64 + kv_per_token * ctx_tokens;
    let ceiling = opts.profile.bandwidth_gb_s * 1e9 / bytes_per_token;
    let decode_tok_s = Percentiles::of(&decode_rates).p50;
    Ok(BenchReport {
        profile: opts.profile.name.clone(),
        device: opts.profile.display.clone(),
        board: opts.host.model.clone(),
        power_mode: opts.host.power_mode.clone(),
        l4t: opts.host.l4t.clone(),
        jetpack: opts.host.jetpack.clone(),
        emollama_version: env!("CARGO_PKG_VERSION").into(),
        git_revision: env!("EMOLLAMA_GIT_REV").into(),
        onnxruntime: emollama_engines::onnx::init_runtime(config.ort_library.as_deref())?.version.clone(),
        llama_cpp_system: emollama_engines::llm::system_info(),
        bundle: m.id.clone(),
        synthetic_bundle: m.synthetic,
        media: opts.media.clone(),
        runs: opts.runs,
        warmup: opts.warmup,
        providers: rt.providers(),
        cold_start_ms,
        stages_ms: stages.iter().map(|(k, v)| (*k, Percentiles::of(v))).collect(),
        time_to_first_token_ms: Percentiles::of(&ttft),
        prefill_tok_s: Percentiles::of(&prefill_rates).p50,
        decode_tok_s,
        peak_rss_mb: peak_rss_mb(),
        tegrastats,
        bandwidth_gb_s: opts.profile.bandwidth_gb_s,
        decode_ceiling_tok_s: ceiling,
        decode_pct_of_ceiling: 100.0 * decode_tok_s / ceiling,
        raw_llama_cpp: RawComparison {
            raw_llama_cpp_tok_s: raw_tok_s,
            emollama_tok_s: our_tok_s,
            ratio: our_tok_s / raw_tok_s,
            tokens: n,
            runs: raw.len(),
        },
    })
}

impl BenchReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# emollama bench: {} ({})\n\n{} · power mode {} · L4T {} (JetPack {}) · ONNX Runtime {} · emollama {} ({})\n\nbundle `{}`{} · media {} · {} runs after {} warm-up\n\n",
            self.device,
            self.profile,
            self.board.as_deref().unwrap_or("-"),
            self.power_mode.as_deref().unwrap_or("-"),
            self.l4t.as_deref().unwrap_or("-"),
            self.jetpack.as_deref().unwrap_or("-"),
            self.onnxruntime,
            self.emollama_version,
            if self.git_revision.is_empty() { "no git" } else { &self.git_revision },
            self.bundle,
            if self.synthetic_bundle { " (synthetic, random weights)" } else { "" },
            self.media.join(", "),
            self.runs,
            self.warmup
        );
        s += "| stage | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|\n";
        for k in Stage::ALL.iter().filter(|s| **s != Stage::FirstToken).chain([Stage::FirstToken].iter()) {
            if let Some(p) = self.stages_ms.get(k) {
                s += &format!("| {k} | {:.1} | {:.1} | {:.1} |\n", p.p50, p.p90, p.p99);
            }
        }
        s += &format!(
            "\n| metric | value |\n|---|---:|\n| cold start (process → first token) | {:.0} ms |\n| time to first token (warm, p50) | {:.0} ms |\n| prefill | {:.0} tok/s |\n| decode | {:.1} tok/s |\n| bandwidth ceiling ({:.0} GB/s) | {:.1} tok/s |\n| decode / ceiling | {:.1} % |\n| raw llama.cpp loop | {:.1} tok/s |\n| emollama / raw llama.cpp | {:.3} |\n| peak RSS | {:.0} MB |\n| providers | {} |\n",
            self.cold_start_ms,
            self.time_to_first_token_ms.p50,
            self.prefill_tok_s,
            self.decode_tok_s,
            self.bandwidth_gb_s,
            self.decode_ceiling_tok_s,
            self.decode_pct_of_ceiling,
            self.raw_llama_cpp.raw_llama_cpp_tok_s,
            self.raw_llama_cpp.ratio,
            self.peak_rss_mb,
            self.providers.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        );
        if let Some(t) = &self.tegrastats {
            s += &format!("\ntegrastats: `{t}`\n");
        }
        s
    }

    /// A stacked bar of the p50 stage times (without `total`).
    pub fn svg(&self) -> String {
        let colors = [
            "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
            "#bab0ac", "#86bcb6",
        ];
        let stages: Vec<(&str, f64)> = Stage::ALL
            .iter()
            .filter(|k| k.is_work())
            .filter_map(|k| self.stages_ms.get(k).map(|p| (k.name(), p.p50)))
            .collect();
        let total: f64 = stages.iter().map(|s| s.1).sum::<f64>().max(1e-9);
        let (w, bar_h) = (800.0, 40.0);
        let mut x = 10.0;
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"820\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n", 80 + 18 * stages.len());
        s += &format!(
            "<text x=\"10\" y=\"16\">emollama analyze, p50 per stage, {} ({:.0} ms total)</text>\n",
            self.profile, total
        );
        for (i, (name, v)) in stages.iter().enumerate() {
            let bw = w * v / total;
            let c = colors[i % colors.len()];
            s += &format!("<rect x=\"{x:.1}\" y=\"24\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{c}\"><title>{name} {v:.1} ms</title></rect>\n");
            s += &format!("<rect x=\"10\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"28\" y=\"{}\">{name}: {v:.1} ms ({:.0} %)</text>\n", 74 + 18 * i, 84 + 18 * i, 100.0 * v / total);
            x += bw;
        }
        s += "</svg>\n";
        s
    }

    /// Deltas of the stage p50s and the rates against an earlier report.
    pub fn compare(&self, old: &BenchReport) -> String {
        let mut s = format!(
            "| vs earlier ({}) | before | now | change |\n|---|---:|---:|---:|\n",
            if old.git_revision.is_empty() { "-" } else { &old.git_revision }
        );
        let pct = |a: f64, b: f64| if a > 0.0 { 100.0 * (b - a) / a } else { 0.0 };
        for (k, now) in &self.stages_ms {
            if let Some(before) = old.stages_ms.get(k) {
                s += &format!(
                    "| {k} p50 ms | {:.1} | {:.1} | {:+.1} % |\n",
                    before.p50,
                    now.p50,
                    pct(before.p50, now.p50)
                );
            }
        }
        s += &format!(
            "| decode tok/s | {:.1} | {:.1} | {:+.1} % |\n",
            old.decode_tok_s,
            self.decode_tok_s,
            pct(old.decode_tok_s, self.decode_tok_s)
        );
        s += &format!(
            "| cold start ms | {:.0} | {:.0} | {:+.1} % |\n",
            old.cold_start_ms,
            self.cold_start_ms,
            pct(old.cold_start_ms, self.cold_start_ms)
        );
        s
    }
}

/// Write `bench.md`, `bench.json` and `bench.svg` into `dir` (each under a temporary
/// name first, then renamed).
pub fn write_outputs(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, CommandError> {
    let json = serde_json::to_string_pretty(report).expect("serialisable");
    let (md, svg) = (report.markdown(), report.svg());
    Ok(crate::outputs::write_files(
        dir,
        &[("bench.md", md.as_bytes()), ("bench.json", json.as_bytes()), ("bench.svg", svg.as_bytes())],
    )?)
}
