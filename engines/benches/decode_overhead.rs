//! Decode speed of the wrapper (`LlmContext::generate`: sampling, incremental
//! detokenization, stop-string checks, streaming callback) against a raw llama.cpp loop
//! (`llama_decode` + arg-max, nothing else), greedy, same GGUF, same threads, same
//! n_batch, alternating runs in one process. Not a test: it reports, it asserts nothing.
//!
//! usage: cargo bench -p emollama-engines --bench decode_overhead -- MODEL.gguf [TOKENS] [RUNS] [THREADS]

use std::ops::ControlFlow;
use std::sync::Arc;

use emollama_engines::llm::{
    raw_greedy_decode, ContextParams, GenerateOptions, LlmContext, LlmModel, ModelParams, Sampler, SamplingParams,
    Segment,
};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn raw_loop(model: &LlmModel, params: &ContextParams, prompt: &[i32], n: usize) -> (f64, Vec<i32>) {
    raw_greedy_decode(model, params, prompt, n).unwrap()
}

fn wrapper_loop(model: &Arc<LlmModel>, params: &ContextParams, prompt: &[i32], n: usize) -> (f64, Vec<i32>) {
    let mut ctx = LlmContext::new(model.clone(), params.clone()).unwrap();
    ctx.prefill(&[Segment::Tokens(prompt)], false).unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let opts = GenerateOptions { max_new_tokens: n, stop_strings: vec!["</s>".into()] };
    let mut pieces = 0usize;
    let g = ctx
        .generate(&mut sampler, &opts, None, |_| {
            pieces += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
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
    let params =
        ContextParams { n_ctx: 1024, n_batch: 512, n_threads: threads, n_threads_batch: threads, ..Default::default() };
    let prompt = model
        .tokenize(
            "<s>[INST] The person in video says: we made it.  [emotion] Please determine the emotion. [/INST]",
            true,
            true,
        )
        .unwrap();
    println!(
        "model {} ({} parameters), {n} greedy tokens, {runs} runs each, {threads} threads",
        model.description(),
        model.n_params()
    );
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
