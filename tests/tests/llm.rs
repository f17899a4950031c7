//! The llama.cpp backbone on the tiny synthetic LLaMA (real LLaMA-2 vocabulary):
//! tokenization goldens, embedding splice parity, transformers goldens, generation,
//! prefix reuse, and errors on bad input.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use emollama_bundle::{GgufType, KvType};
use emollama_engines::llm::gguf::GgufFile;
use emollama_engines::llm::{
    apply_repetition_penalty, quantize, ContextParams, FlashAttention, GenerateOptions, LlmContext, LlmModel,
    ModelParams, Sampler, SamplingParams, Segment, StopReason,
};
use emollama_engines::EngineError;

fn f32_gguf() -> PathBuf {
    common::bundle_dir().join("llm-f32.gguf")
}

/// The F16 variant, made once per test run with our own quantize function.
fn f16_gguf() -> PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("llm-f16.gguf");
        quantize(&f32_gguf(), &out, GgufType::F16, 2).unwrap();
        (dir, out)
    })
    .1
    .clone()
}

fn model(path: &std::path::Path) -> Arc<LlmModel> {
    Arc::new(LlmModel::load(path, &ModelParams::default()).unwrap())
}

/// F32 KV cache: parity with transformers' fp32 reference (an F16 cache alone moves
/// logits by about 1e-3).
fn context(model: &Arc<LlmModel>, n_ctx: u32) -> LlmContext {
    LlmContext::new(model.clone(), f32_params(n_ctx)).unwrap()
}

fn f32_params(n_ctx: u32) -> ContextParams {
    ContextParams {
        n_ctx,
        n_batch: 512,
        n_threads: 2,
        n_threads_batch: 2,
        kv_cache_type: KvType::F32,
        flash_attention: FlashAttention::Off,
    }
}

const EVAL_SUFFIX: &str = "</video> <feature><FeatureHere></feature> The person in video says: I can't believe we made it.  [emotion] Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt.  [/INST]";

#[test]
fn eval_prompt_tokenizes_to_the_spec_golden_ids() {
    let m = model(&f32_gguf());
    // Segment 0 with add_special (BOS) and parse_special (the literal "<s>" → id 1).
    assert_eq!(m.tokenize("<s>[INST] <video>", true, true).unwrap(), vec![1, 1, 518, 25580, 29962, 529, 9641, 29958]);
    let seg1 = m.tokenize(EVAL_SUFFIX, false, true).unwrap();
    let head =
        [1533, 9641, 29958, 529, 14394, 5299, 19132, 10605, 2565, 14394, 29958, 450, 2022, 297, 4863, 4083, 29901];
    assert_eq!(&seg1[..head.len()], &head);
    let task = [29871, 518, 331, 8194, 29962, 3529, 8161];
    assert!(seg1.windows(task.len()).any(|w| w == task), "'  [emotion] Please determine' ids in {seg1:?}");
    assert!(seg1.ends_with(&[29871, 518, 29914, 25580, 29962]), "trailing '  [/INST]': {seg1:?}");
    // Label tokens of spec §4.3.
    for (label, ids) in [
        ("happy", vec![9796]),
        ("sad", vec![14610]),
        ("neutral", vec![21104]),
        ("angry", vec![26230]),
        ("surprise", vec![16671]),
        ("fear", vec![8866]),
        ("doubt", vec![7404]),
        ("worried", vec![6365, 1255]),
        ("contempt", vec![640, 3456]),
    ] {
        assert_eq!(m.tokenize(label, false, false).unwrap(), ids, "{label}");
    }
    assert_eq!(
        m.tokenize("I feel happy today, because", true, false).unwrap(),
        vec![1, 306, 4459, 9796, 9826, 29892, 1363]
    );
    assert_eq!((m.bos(), m.eos(), m.n_vocab()), (1, 2, 32000));
}

#[test]
fn llama_cpp_tokenizer_test_vectors_pass() {
    let vocab = common::vocab_gguf();
    let inp = std::fs::read_to_string(vocab.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(vocab.with_extension("gguf.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<&str> = out.lines().collect();
    assert!(texts.len() >= 30);
    // The .inp file ends with a separator, hence one empty tail.
    let texts = &texts[..expected.len()];
    let m = model(&f32_gguf());
    for (text, want) in texts.iter().zip(&expected) {
        let want: Vec<i32> = want.split_whitespace().map(|t| t.parse().unwrap()).collect();
        assert_eq!(m.tokenize(text, false, false).unwrap(), want, "{text:?}");
    }
}

/// Rows fed as embeddings give exactly the logits of the tokens they embed.
fn assert_splice_bit_identical(path: &std::path::Path) {
    let m = model(path);
    let gguf = GgufFile::open(path).unwrap();
    let tokens = [1, 1, 518, 25580, 29962, 529, 9641, 29958, 1533, 9641, 29958, 9796];
    let rows: Vec<f32> = tokens.iter().flat_map(|&t| gguf.read_row("token_embd.weight", t as u64).unwrap()).collect();
    let mut by_token = context(&m, 128);
    by_token.prefill(&[Segment::Tokens(&tokens)], false).unwrap();
    let mut by_row = context(&m, 128);
    by_row.prefill(&[Segment::Embeddings(&rows)], false).unwrap();
    let (a, b) = (by_token.logits().unwrap(), by_row.logits().unwrap());
    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "{}: max diff {}", path.display(), common::max_abs_diff(a, b));
}

#[test]
fn splice_of_token_embedding_rows_is_bit_identical_f32() {
    assert_splice_bit_identical(&f32_gguf());
}

#[test]
fn splice_of_token_embedding_rows_is_bit_identical_f16() {
    assert_splice_bit_identical(&f16_gguf());
}

fn golden_segments() -> (Vec<i32>, Vec<f32>, Vec<i32>) {
    let g = &common::goldens()["llm"]["segments"];
    let ids = |v: &serde_json::Value| {
        v["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect::<Vec<_>>()
    };
    let rows = common::tensor(&g[1]["embeddings"]).into_raw_vec_and_offset().0;
    (ids(&g[0]), rows, ids(&g[2]))
}

#[test]
fn spliced_golden_prompt_matches_transformers() {
    let m = model(&f32_gguf());
    let (prefix, rows, suffix) = golden_segments();
    let mut ctx = context(&m, 512);
    let report =
        ctx.prefill(&[Segment::Tokens(&prefix), Segment::Embeddings(&rows), Segment::Tokens(&suffix)], true).unwrap();
    assert_eq!(report.rows, prefix.len() + 260 + suffix.len());
    let want = common::tensor(&common::goldens()["llm"]["logits_at_segment_ends"]);
    for (i, got) in report.segment_logits.iter().enumerate() {
        let want_row = want.index_axis(ndarray::Axis(0), i);
        let diff = common::max_abs_diff(got, want_row.as_slice().unwrap());
        println!("segment {i}: max |llama.cpp - transformers| = {diff:.3e}");
        assert!(diff <= 1e-3, "segment {i}: {diff}");
    }
    let golden_greedy: Vec<i32> = common::goldens()["llm"]["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap() as i32)
        .collect();
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    // The random model may emit EOS; the golden loop did not stop, so neither do we here.
    let mut tokens = Vec::new();
    for _ in 0..golden_greedy.len() {
        let t = sampler.sample(ctx.logits().unwrap());
        tokens.push(t);
        ctx.decode_token(t).unwrap();
    }
    assert_eq!(tokens, golden_greedy);
    let perf = ctx.perf();
    assert!(perf.prompt_rows > 0 && perf.prompt_ms > 0.0 && perf.generated_tokens > 0, "{perf:?}");
}

fn greedy_after(ctx: &mut LlmContext, n: usize) -> Vec<i32> {
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let opts = GenerateOptions { max_new_tokens: n, stop_strings: vec![] };
    ctx.generate(&mut sampler, &opts, None, |_| ControlFlow::Continue(())).unwrap().tokens
}

/// The bare C-API loop the benchmarks compare against (`raw_greedy_decode`: its context
/// owned by a guard, its logits pointer checked) decodes what the wrapper decodes, and a
/// prompt llama.cpp refuses is an error from it, not a crash; the model keeps working.
#[test]
fn the_raw_reference_loop_decodes_what_the_wrapper_decodes() {
    use emollama_engines::llm::raw_greedy_decode;
    let m = model(&f32_gguf());
    let prompt = m.tokenize("<s>[INST] The person looks happy. [/INST]", true, true).unwrap();
    let mut ctx = context(&m, 512);
    ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
    let want = greedy_after(&mut ctx, 8);
    let params = f32_params(512);
    let (per_s, raw) = raw_greedy_decode(&m, &params, &prompt, 8).unwrap();
    assert_eq!(raw, want);
    assert!(per_s > 0.0);
    for bad in [vec![], vec![m.n_vocab() + 5]] {
        match raw_greedy_decode(&m, &params, &bad, 4) {
            Err(EngineError::Decode { .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(raw_greedy_decode(&m, &params, &prompt, 8).unwrap().1, want);
}

#[test]
fn prefix_reuse_gives_identical_output() {
    let m = model(&f32_gguf());
    let (prefix, rows, suffix) = golden_segments();
    let request_a = m.tokenize(" The person looks happy.", false, false).unwrap();
    let request_b = m.tokenize(" The person looks sad.", false, false).unwrap();

    let fresh = |req: &[i32]| {
        let mut ctx = context(&m, 512);
        ctx.prefill(&[Segment::Tokens(&prefix), Segment::Embeddings(&rows), Segment::Tokens(&suffix)], false).unwrap();
        ctx.prefill(&[Segment::Tokens(req)], false).unwrap();
        greedy_after(&mut ctx, 12)
    };
    let (want_a, want_b) = (fresh(&request_a), fresh(&request_b));

    // Reuse by saved state, in another context.
    let mut ctx = context(&m, 512);
    ctx.prefill(&[Segment::Tokens(&prefix), Segment::Embeddings(&rows), Segment::Tokens(&suffix)], false).unwrap();
    let state = ctx.save_prefix().unwrap();
    let mut other = context(&m, 512);
    for (req, want) in [(&request_a, &want_a), (&request_b, &want_b)] {
        other.restore_prefix(&state).unwrap();
        other.prefill(&[Segment::Tokens(req)], false).unwrap();
        assert_eq!(&greedy_after(&mut other, 12), want);
    }
    // Reuse in place, by truncating back to the prefix.
    let keep = state.n_past();
    for (req, want) in [(&request_a, &want_a), (&request_b, &want_b), (&request_a, &want_a)] {
        ctx.truncate(keep);
        ctx.prefill(&[Segment::Tokens(req)], false).unwrap();
        assert_eq!(&greedy_after(&mut ctx, 12), want);
    }
}

#[test]
fn streaming_delivers_pieces_that_add_up_and_stops_as_asked() {
    let m = model(&f32_gguf());
    let prompt = m.tokenize("<s>[INST] Describe the scene. [/INST]", true, true).unwrap();
    let mut ctx = context(&m, 256);
    ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
    let mut pieces = Vec::new();
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let opts = GenerateOptions { max_new_tokens: 20, stop_strings: vec![] };
    let g = ctx
        .generate(&mut sampler, &opts, None, |p| {
            pieces.push(p.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(pieces.len() > 1, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), g.text);
    assert!(matches!(g.stop, StopReason::MaxTokens | StopReason::EndOfSequence));
    assert_eq!(m.detokenize(&g.tokens, false).unwrap(), g.text);

    // A stop string taken from the middle of that text ends generation before it.
    let cut = g.text.char_indices().nth(g.text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = g.text[cut..].chars().take(3).collect();
    let mut ctx = context(&m, 256);
    ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
    let mut streamed = String::new();
    let opts = GenerateOptions { max_new_tokens: 20, stop_strings: vec![stop.clone()] };
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let s = ctx
        .generate(&mut sampler, &opts, None, |p| {
            streamed.push_str(p);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(s.stop, StopReason::StopString);
    assert!(!s.text.contains(&stop) && g.text.starts_with(&s.text), "{:?} / {:?} / {stop:?}", s.text, g.text);
    assert_eq!(streamed, s.text);

    // Cancellation: the flag, and a callback that breaks.
    let mut ctx = context(&m, 256);
    ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
    let cancelled = emollama_engines::CancelToken::new();
    cancelled.cancel();
    let c = ctx
        .generate(&mut Sampler::new(SamplingParams::greedy()).unwrap(), &opts, Some(&cancelled), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!((c.stop, c.tokens.len()), (StopReason::Cancelled, 0));
    let mut ctx = context(&m, 256);
    ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
    let b = ctx
        .generate(&mut Sampler::new(SamplingParams::greedy()).unwrap(), &GenerateOptions::default(), None, |_| {
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(b.stop, StopReason::Cancelled);
    assert!(b.tokens.len() <= 3);
}

#[test]
fn seeded_sampling_through_the_model_is_reproducible() {
    let m = model(&f32_gguf());
    let prompt = m.tokenize("<s>[INST] How does the person feel? [/INST]", true, true).unwrap();
    let run = |seed: u64| {
        let mut ctx = context(&m, 256);
        ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
        // The official demo preset: temperature 0.2, top-p 0.9, top-k 50, penalty 1.05.
        let params = SamplingParams { temperature: 1.5, top_k: 50, top_p: 0.9, repetition_penalty: 1.05, seed };
        let opts = GenerateOptions { max_new_tokens: 24, stop_strings: vec![] };
        ctx.generate(&mut Sampler::new(params).unwrap(), &opts, None, |_| ControlFlow::Continue(())).unwrap().tokens
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn repetition_penalty_changes_only_generated_ids() {
    let m = model(&f32_gguf());
    let prompt = m.tokenize("<s>[INST] happy sad happy [/INST]", true, true).unwrap();
    let mut ctx = context(&m, 256);
    ctx.prefill(&[Segment::Tokens(&prompt)], false).unwrap();
    let generated = greedy_after(&mut ctx, 6);
    let logits = ctx.logits().unwrap().to_vec();
    let mut penalized = logits.clone();
    apply_repetition_penalty(&mut penalized, &generated, 1.05);
    for (id, (a, b)) in logits.iter().zip(&penalized).enumerate() {
        if generated.contains(&(id as i32)) {
            assert_ne!(a, b, "generated id {id} is penalized");
        } else {
            assert_eq!(a, b, "id {id} (prompt ids included) is untouched");
        }
    }
    assert!(prompt.iter().any(|t| !generated.contains(t)), "some prompt id was not generated and stayed unpenalized");
}

#[test]
fn bad_model_files_are_specific_errors_and_the_process_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = LlmModel::load(&tmp.path().join("none.gguf"), &ModelParams::default());
    assert!(matches!(missing, Err(EngineError::GgufMissing { .. })), "{missing:?}");

    let empty = tmp.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(LlmModel::load(&empty, &ModelParams::default()), Err(EngineError::GgufInvalid { .. })));

    let random = tmp.path().join("random.gguf");
    std::fs::write(&random, (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    assert!(matches!(LlmModel::load(&random, &ModelParams::default()), Err(EngineError::GgufInvalid { .. })));

    let truncated = tmp.path().join("truncated.gguf");
    let bytes = std::fs::read(f32_gguf()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let t = LlmModel::load(&truncated, &ModelParams::default());
    assert!(matches!(t, Err(EngineError::ModelLoad { .. })), "{t:?}");
    assert!(matches!(
        quantize(&truncated, &tmp.path().join("q.gguf"), GgufType::Q8_0, 1),
        Err(EngineError::Quantize { .. })
    ));
    assert!(!tmp.path().join("q.gguf").exists() && !tmp.path().join("q.gguf.partial").exists(), "nothing half-written");

    // The real model still loads and runs after all of that.
    let m = model(&f32_gguf());
    let mut ctx = context(&m, 64);
    ctx.prefill(&[Segment::Tokens(&[1, 306])], false).unwrap();
    assert_eq!(ctx.logits().unwrap().len(), 32000);
}

#[test]
fn bad_prompts_are_rejected_before_touching_the_cache() {
    let m = model(&f32_gguf());
    let mut ctx = context(&m, 64);
    let n_ctx = ctx.n_ctx() as usize; // llama.cpp may round the size up
    let rows = vec![0.0f32; (n_ctx - 1) * m.n_embd()];
    match ctx.prefill(&[Segment::Tokens(&[1, 2]), Segment::Embeddings(&rows)], false) {
        Err(EngineError::ContextOverflow { needed, n_ctx: got }) => {
            assert_eq!((needed, got as usize), (n_ctx + 1, n_ctx))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ctx.n_past(), 0, "nothing was decoded");
    let ragged = vec![0.0f32; m.n_embd() + 3];
    assert!(matches!(ctx.prefill(&[Segment::Embeddings(&ragged)], false), Err(EngineError::EmbeddingRagged { .. })));
    assert!(matches!(ctx.check_embedding_width(4096), Err(EngineError::EmbeddingWidth { expected: 64, actual: 4096 })));
    assert!(matches!(ctx.prefill(&[Segment::Tokens(&[32000])], false), Err(EngineError::TokenOutOfRange { .. })));
    assert!(matches!(ctx.logits(), Err(EngineError::NoLogits)));
    // Generation that reaches the end of the context stops cleanly.
    ctx.prefill(&[Segment::Tokens(&vec![306; n_ctx - 4])], false).unwrap();
    let g = ctx
        .generate(&mut Sampler::new(SamplingParams::greedy()).unwrap(), &GenerateOptions::default(), None, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(matches!(g.stop, StopReason::ContextFull | StopReason::EndOfSequence), "{:?}", g.stop);
    assert!(ctx.n_past() <= n_ctx);
}

#[test]
fn quantized_variants_load_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    for q in [GgufType::Q8_0, GgufType::Q4_0] {
        let out = tmp.path().join(format!("{q:?}.gguf"));
        quantize(&f32_gguf(), &out, q, 2).unwrap();
        let m = model(&out);
        assert!(m.size() < model(&f32_gguf()).size());
        let mut ctx = context(&m, 64);
        ctx.prefill(&[Segment::Tokens(&[1, 306, 4459])], false).unwrap();
        assert!(ctx.logits().unwrap().iter().all(|l| l.is_finite()));
    }
}
