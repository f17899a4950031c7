//! Decode speed of the wrapper (`LlmContext::generate`: sampling, incremental
//! detokenization, stop-string checks, streaming callback) against a raw llama.cpp loop
//! (`llama_decode` + arg-max, nothing else), greedy, same GGUF, same threads, same
//! n_batch, alternating runs in one process. Not a test: it reports, it asserts nothing.
//!
//! usage: cargo bench -p emollama-engines --bench decode_overhead -- MODEL.gguf [TOKENS] [RUNS] [THREADS]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use emollama_engines::llm::{ContextParams, GenerateOptions, LlmContext, LlmModel, ModelParams, Sampler, SamplingParams, Segment};
use llama_cpp_sys_2 as sys;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The reference: what any llama.cpp program does, with no wrapper at all.
fn raw_loop(model: &LlmModel, params: &ContextParams, prompt: &[i32], n: usize) -> (f64, Vec<i32>) {
    // SAFETY: plain llama.cpp C API use on a live model; every pointer is checked.
    unsafe {
        let mut cp = sys::llama_context_default_params();
        cp.n_ctx = params.n_ctx;
        cp.n_batch = params.n_batch;
        cp.n_ubatch = params.n_batch;
        cp.n_seq_max = 1;
        cp.n_threads = params.n_threads;
        cp.n_threads_batch = params.n_threads_batch;
        let ctx = sys::llama_init_from_model(raw_model(model), cp);
        assert!(!ctx.is_null());
        let mut prompt = prompt.to_vec();
        assert_eq!(sys::llama_decode(ctx, sys::llama_batch_get_one(prompt.as_mut_ptr(), prompt.len() as i32)), 0);
        let n_vocab = model.n_vocab() as usize;
        let mut out = Vec::with_capacity(n);
        let started = Instant::now();
        for i in 0..n {
            let logits = std::slice::from_raw_parts(sys::llama_get_logits_ith(ctx, -1), n_vocab);
            let mut best = 0usize;
            for (j, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = j;
                }
            }
            let mut tok = best as i32;
            out.push(tok);
            if i + 1 < n {
                assert_eq!(sys::llama_decode(ctx, sys::llama_batch_get_one(&mut tok, 1)), 0);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        sys::llama_free(ctx);
        ((n - 1) as f64 / secs, out)
    }
}

/// The model pointer, through the only accessor the bench needs (crate-private in the
/// library): reload the same file with the C API.
fn raw_model(model: &LlmModel) -> *mut sys::llama_model {
    use std::sync::OnceLock;
    struct Ptr(*mut sys::llama_model);
    unsafe impl Send for Ptr {}
    unsafe impl Sync for Ptr {}
    static RAW: OnceLock<Ptr> = OnceLock::new();
    RAW.get_or_init(|| {
        let path = std::ffi::CString::new(model.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: default params, valid path; checked for NULL.
        let m = unsafe { sys::llama_model_load_from_file(path.as_ptr(), sys::llama_model_default_params()) };
        assert!(!m.is_null());
        Ptr(m)
    })
    .0
}

fn wrapper_loop(model: &Arc<LlmModel>, params: &ContextParams, prompt: &[i32], n: usize) -> (f64, Vec<i32>) {
    let mut ctx = LlmContext::new(model.clone(), params.clone()).unwrap();
    ctx.prefill(&[Segment::Tokens(prompt)], false).unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let opts = GenerateOptions { max_new_tokens: n, stop_strings: vec!["</s>".into()] };
    let mut pieces = 0usize;
    let g = ctx.generate(&mut sampler, &opts, None, |_| { pieces += 1; ControlFlow::Continue(()) }).unwrap();
    assert_eq!(g.tokens.len(), n, "greedy random model hit a stop early: {:?}", g.stop);
    (g.decode_per_s(), g.tokens)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let path = args.first().expect("usage: decode_overhead MODEL.gguf [TOKENS] [RUNS] [THREADS]");
    let n: usize = args.get(1).map_or(128, |s| s.parse().unwrap());
    let runs: usize = args.get(2).map_or(7, |s| s.parse().unwrap());
    let threads: i32 = args.get(3).map_or(2, |s| s.parse().unwrap());
    let model = Arc::new(LlmModel::load(std::path::Path::new(path), &ModelParams::default()).unwrap());
    let params = ContextParams { n_ctx: 1024, n_batch: 512, n_threads: threads, n_threads_batch: threads, ..Default::default() };
    let prompt = model.tokenize("<s>[INST] The person in video says: we made it.  [emotion] Please determine the emotion. [/INST]", true, true).unwrap();
    println!("model {} ({} parameters), {n} greedy tokens, {runs} runs each, {threads} threads", model.description(), model.n_params());
    // Warm-up both paths once (page cache, thread pools).
    let (_, want) = raw_loop(&model, &params, &prompt, 8);
    let (_, got) = wrapper_loop(&model, &params, &prompt, 8);
    assert_eq!(want, got, "both loops pick the same tokens");
    let (mut raw, mut wrapped) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raw.push(raw_loop(&model, &params, &prompt, n).0);
        wrapped.push(wrapper_loop(&model, &params, &prompt, n).0);
    }
    let (r, w) = (median(&mut raw), median(&mut wrapped));
    println!("raw llama.cpp loop : median {r:.1} tokens/s");
    println!("emollama wrapper   : median {w:.1} tokens/s");
    println!("ratio wrapper/raw  : {:.3}", w / r);
}
