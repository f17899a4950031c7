//! `emollama-device-check`: what a lent GPU machine is asked in its first minutes, by a
//! binary that needs only the NVIDIA driver and cuBLAS there (no FFmpeg, no ONNX
//! Runtime, no Rust): which devices llama.cpp sees, whether its CUDA backend computes
//! what its CPU backend does on the synthetic bundle's LLM, and how fast a model at
//! LLaMA-2-7B's real dimensions prefills and decodes, against the GPU's memory-bandwidth
//! ceiling. Each subcommand prints one JSON object; `scripts/device-check` runs them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use emollama_engines::llm::gguf::GgufFile;
use emollama_engines::llm::{argmax, devices, ContextParams, LlmContext, LlmModel, ModelParams, Segment};
use serde::Serialize;
use serde_json::json;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The devices llama.cpp computes on.
    Devices,
    /// The same prompt (tokens, spliced embedding rows, tokens) and greedy decode on the
    /// CPU and on the GPU: the tokens must be identical and every step's logits within
    /// the tolerance.
    Parity {
        #[arg(long)]
        gguf: PathBuf,
        /// Greedy tokens after the prompt.
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// The largest |GPU − CPU| logit difference allowed, as a share of that step's
        /// CPU logit range (max − min).
        #[arg(long, default_value_t = 0.01)]
        tolerance: f64,
    },
    /// Prefill rows/s, time to first token and decode tokens/s with every layer on the
    /// GPU (medians of `--runs`), and decode against the memory-bandwidth ceiling.
    Bench {
        #[arg(long)]
        gguf: PathBuf,
        /// Prompt rows: the official prompt of a full-mode request is about 320.
        #[arg(long, default_value_t = 320)]
        rows: usize,
        #[arg(long, default_value_t = 128)]
        decode: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The GPU's memory bandwidth in GB/s (H200: 4800); omitted: no ceiling ratio.
        #[arg(long)]
        bandwidth_gbs: Option<f64>,
        /// Layers on the GPU (all by default; 0 measures the CPU).
        #[arg(long, default_value_t = 999)]
        n_gpu_layers: i32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Devices => json!({ "devices": devices() }),
        Command::Parity { gguf, steps, tolerance } => serde_json::to_value(parity(&gguf, steps, tolerance)?)?,
        Command::Bench { gguf, rows, decode, runs, bandwidth_gbs, n_gpu_layers } => {
            serde_json::to_value(bench(&gguf, rows, decode, runs.max(1), bandwidth_gbs, n_gpu_layers)?)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn context_params(n_ctx: u32) -> ContextParams {
    ContextParams { n_ctx, n_batch: 512, ..ContextParams::default() }
}

fn load(gguf: &Path, n_gpu_layers: i32) -> anyhow::Result<std::sync::Arc<LlmModel>> {
    let model = LlmModel::load(gguf, &ModelParams { n_gpu_layers, use_mmap: true })
        .with_context(|| format!("loading {} with {n_gpu_layers} layers on the GPU", gguf.display()))?;
    Ok(std::sync::Arc::new(model))
}

#[derive(Serialize)]
struct Parity {
    gguf: String,
    gpu: Vec<String>,
    compared: String,
    prompt_rows: usize,
    steps: usize,
    cpu_tokens: Vec<i32>,
    gpu_tokens: Vec<i32>,
    tokens_identical: bool,
    /// The largest |GPU − CPU| logit difference over the prompt's last row and every step.
    max_abs_logit_diff: f32,
    /// The same, as a share of the step's CPU logit range.
    max_relative_logit_diff: f32,
    tolerance: f64,
    passed: bool,
}

/// The prompt both backends get: BOS and instruction tokens, embedding rows spliced in
/// exactly as the runtime splices encoder rows (here: rows of the model's own token
/// embedding, a realistic scale), then the closing tokens.
fn parity(gguf: &Path, steps: usize, tolerance: f64) -> anyhow::Result<Parity> {
    let cpu_model = load(gguf, 0)?;
    let gpu_model = load(gguf, 999)?;
    let gpu: Vec<String> = devices().into_iter().filter(|d| d.is_gpu()).map(|d| d.description).collect();
    // Without a GPU both runs are on the CPU: the comparison still runs (the check of
    // this program), but it cannot pass.
    let compared = if gpu.is_empty() {
        format!("cpu against cpu: {}", emollama_engines::llm::no_gpu_reason())
    } else {
        "cuda against cpu".to_string()
    };
    let file = GgufFile::open(gguf)?;
    let mut rows = Vec::new();
    for id in [306u64, 1016, 3971, 29871, 4955, 22172, 13, 1576] {
        rows.extend(file.read_row("token_embd.weight", id % cpu_model.n_vocab() as u64)?);
    }
    let head = cpu_model.tokenize("[INST] <VideoHere> The person in video says: I can't believe it. ", true, false)?;
    let tail = cpu_model.tokenize(" What is the emotion? [/INST]", false, false)?;
    let prompt = [Segment::Tokens(&head), Segment::Embeddings(&rows), Segment::Tokens(&tail)];
    let mut cpu = LlmContext::new(cpu_model.clone(), context_params(512))?;
    let mut gpu_ctx = LlmContext::new(gpu_model, context_params(512))?;
    let prompt_rows = cpu.prefill(&prompt, false)?.rows;
    gpu_ctx.prefill(&prompt, false)?;
    let (mut cpu_tokens, mut gpu_tokens) = (Vec::new(), Vec::new());
    let (mut max_abs, mut max_rel) = (0f32, 0f32);
    for step in 0..=steps {
        let (c, g) = (cpu.logits()?.to_vec(), gpu_ctx.logits()?);
        let (lo, hi) = c.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let diff = c.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        max_abs = max_abs.max(diff);
        max_rel = max_rel.max(diff / (hi - lo).max(f32::EPSILON));
        if step == steps {
            break;
        }
        // Teacher-forced on the CPU's token: the GPU's own pick is recorded, and every
        // step compares logits at the same prefix.
        let (next, gpu_next) = (argmax(&c), argmax(g));
        cpu_tokens.push(next);
        gpu_tokens.push(gpu_next);
        cpu.decode_token(next)?;
        gpu_ctx.decode_token(next)?;
    }
    let tokens_identical = cpu_tokens == gpu_tokens;
    Ok(Parity {
        gguf: gguf.display().to_string(),
        passed: !gpu.is_empty() && tokens_identical && f64::from(max_rel) <= tolerance,
        gpu,
        compared,
        prompt_rows,
        steps,
        cpu_tokens,
        gpu_tokens,
        tokens_identical,
        max_abs_logit_diff: max_abs,
        max_relative_logit_diff: max_rel,
        tolerance,
    })
}

#[derive(Serialize)]
struct Bench {
    gguf: String,
    model: String,
    devices: Vec<String>,
    n_gpu_layers: i32,
    load_s: f64,
    prompt_rows: usize,
    decode_tokens: usize,
    runs: usize,
    prefill_rows_per_s: f64,
    ttft_ms: f64,
    decode_tok_per_s: f64,
    /// Weight bytes one decoded token reads (all but the token-embedding table).
    bytes_per_token: u64,
    bandwidth_gbs: Option<f64>,
    /// bandwidth / bytes_per_token: the decode rate if weights streamed at full bandwidth.
    ceiling_tok_per_s: Option<f64>,
    /// decode_tok_per_s / ceiling_tok_per_s.
    ceiling_ratio: Option<f64>,
    /// Every logit of the last step is a number (random weights at a trained scale).
    logits_finite: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(
    gguf: &Path,
    rows: usize,
    decode: usize,
    runs: usize,
    bandwidth_gbs: Option<f64>,
    n_gpu_layers: i32,
) -> anyhow::Result<Bench> {
    let started = Instant::now();
    let model = load(gguf, n_gpu_layers)?;
    let load_s = started.elapsed().as_secs_f64();
    let n_vocab = model.n_vocab();
    // A fixed, varied prompt of token ids (prefill costs the same for embedding rows).
    let prompt: Vec<i32> =
        std::iter::once(model.bos()).chain((1..rows as i32).map(|i| 100 + (i * 7919) % (n_vocab - 200))).collect();
    let mut ctx = LlmContext::new(model.clone(), context_params((rows + decode + 16).next_power_of_two() as u32))?;
    let (mut prefill, mut ttft, mut decode_rates) = (Vec::new(), Vec::new(), Vec::new());
    // One unmeasured run first: CUDA kernels load and the weights reach the GPU's caches.
    for run in 0..=runs {
        ctx.clear();
        let t0 = Instant::now();
        ctx.prefill(&[Segment::Tokens(&prompt)], false)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut next = argmax(ctx.logits()?);
        ctx.decode_token(next)?;
        let first_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 1..decode {
            next = argmax(ctx.logits()?);
            ctx.decode_token(next)?;
        }
        let decode_s = t1.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(rows as f64 / prefill_s);
            ttft.push(first_s * 1e3);
            decode_rates.push((decode - 1) as f64 / decode_s);
        }
    }
    let logits_finite = ctx.logits()?.iter().all(|l| l.is_finite());
    let bytes_per_token = model.size().saturating_sub(embedding_table_bytes(gguf)?);
    let decode_tok_per_s = median(decode_rates);
    let ceiling = bandwidth_gbs.map(|b| b * 1e9 / bytes_per_token as f64);
    Ok(Bench {
        gguf: gguf.display().to_string(),
        model: model.description(),
        devices: devices().into_iter().map(|d| format!("{}: {}", d.name, d.description)).collect(),
        n_gpu_layers,
        load_s,
        prompt_rows: rows,
        decode_tokens: decode,
        runs,
        prefill_rows_per_s: median(prefill),
        ttft_ms: median(ttft),
        decode_tok_per_s,
        bytes_per_token,
        bandwidth_gbs,
        ceiling_tok_per_s: ceiling,
        ceiling_ratio: ceiling.map(|c| decode_tok_per_s / c),
        logits_finite,
    })
}

/// The token-embedding table's bytes: from its offset to the next tensor's.
fn embedding_table_bytes(gguf: &Path) -> anyhow::Result<u64> {
    let file = GgufFile::open(gguf)?;
    let table = file.tensor("token_embd.weight").context("no token_embd.weight")?;
    let next = file.tensors.iter().map(|t| t.offset).filter(|&o| o > table.offset).min();
    let end = next.unwrap_or(std::fs::metadata(gguf)?.len() - file.data_start());
    Ok(end - table.offset)
}
