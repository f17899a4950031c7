//! Speech recognition with the bundle's Whisper engines (`asr_*` roles): the log-mel
//! front end ([`LogMel`]), the encoder and the cross-attention keys and values once per
//! clip, then greedy decoding as transformers' `WhisperForConditionalGeneration.generate`
//! does it for audio under 30 s: the forced prefix (start, language, task,
//! no-timestamps), the language detected from the start token when none is given,
//! `suppress` on every step and `begin_suppress` on the first, until the end token or
//! `max_length` ids in all. Only the first 30 s window is heard. The engines stay
//! loaded, or are loaded for each recognition (in turn), or run on the CPU provider, as
//! the memory plan placed them ([`AsrPlacement`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use emollama_bundle::contract::{
    CROSS_K, CROSS_V, ENCODER_HIDDEN, INPUT_FEATURES, INPUT_IDS, LOGITS, PAST_K, PAST_V, PRESENT_K, PRESENT_V,
};
use emollama_bundle::{AsrInfo, Bundle, BundleError, Role, TensorSpec};
use emollama_devices::AsrPlacement;
use emollama_engines::llm::argmax;
use emollama_engines::onnx::{EncoderEngine, EngineOptions, OrtRuntime, ProviderPolicy};
use emollama_engines::{CancelToken, EngineError};
use emollama_media::LogMel;

use crate::RuntimeError;

/// What Whisper writes: the words in the language spoken, or translated to English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum AsrTask {
    /// To English (LLaMA-2 and Emotion-LLaMA's training text are English).
    #[default]
    Translate,
    Transcribe,
}

/// One recognised window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// The language code forced or detected (`en`, `zh`, …).
    pub language: String,
    pub task: AsrTask,
    /// The decoder's ids, forced prefix and end token included (as `generate` returns
    /// them with `return_dict_in_generate`).
    pub ids: Vec<u32>,
    /// The whole recognition, and its parts: the front end, loading the engines (in
    /// turn; 0 when resident), the encoder with the cross-attention keys and values, the
    /// decoder steps (language detection included).
    pub ms: f64,
    pub log_mel_ms: f64,
    pub load_ms: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// Greedy decoding's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The forced prefix, the generated ids, the end token when reached.
    pub ids: Vec<u32>,
    pub language: String,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// One engine's file and contract, to load it (again, when in turn).
struct EngineFile {
    role: Role,
    path: PathBuf,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    opts: EngineOptions,
}

impl EngineFile {
    fn load(&self, rt: &OrtRuntime) -> Result<EncoderEngine, RuntimeError> {
        let (inputs, outputs) = (self.inputs.clone(), self.outputs.clone());
        Ok(EncoderEngine::load(rt, self.role.as_str(), &self.path, inputs, outputs, &self.opts)?)
    }
}

/// The three Whisper engines, loaded.
struct AsrEngines {
    encoder: EncoderEngine,
    cross_kv: EncoderEngine,
    decoder: EncoderEngine,
}

/// The Whisper engines of a bundle, placed as planned.
pub struct Transcriber {
    info: AsrInfo,
    mel: LogMel,
    rt: &'static OrtRuntime,
    /// Encoder, cross K/V, decoder.
    files: [EngineFile; 3],
    /// Kept loaded; None in turn (loaded for each recognition, released after).
    resident: Option<AsrEngines>,
    placement: AsrPlacement,
    provider: String,
    tokenizer: tokenizers::Tokenizer,
}

fn asr_error(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Engine(EngineError::Run { engine: "asr".into(), message: message.into() })
}

impl Transcriber {
    /// The bundle's transcriber placed as `placement` says (on the CPU: the CPU provider
    /// whatever `opts` says), or None when it has no speech recognition. The engines are
    /// loaded once here either way, so a broken one fails at load, not at a request.
    pub fn load(
        bundle: &Bundle,
        rt: &'static OrtRuntime,
        opts: &EngineOptions,
        placement: AsrPlacement,
    ) -> Result<Option<Self>, RuntimeError> {
        let Some(info) = bundle.manifest().asr.clone() else { return Ok(None) };
        let policy = match placement {
            AsrPlacement::Cpu => ProviderPolicy::cpu_only(),
            AsrPlacement::Resident | AsrPlacement::InTurn => opts.policy.clone(),
        };
        let file = |role: Role| -> Result<EngineFile, RuntimeError> {
            let e = bundle.required(&role)?;
            let opts = EngineOptions { model_sha256: e.sha256.clone(), policy: policy.clone(), ..opts.clone() };
            Ok(EngineFile { path: bundle.path_of(e), inputs: e.inputs.clone(), outputs: e.outputs.clone(), opts, role })
        };
        let files = [file(Role::AsrEncoder)?, file(Role::AsrCrossKv)?, file(Role::AsrDecoder)?];
        let tokenizer_path = bundle.path_of(bundle.required(&Role::AsrTokenizer)?);
        let tokenizer = read_tokenizer(&tokenizer_path)?;
        let mel = LogMel::new(
            info.sample_rate,
            info.n_fft as usize,
            info.hop_length as usize,
            info.n_mels as usize,
            info.chunk_samples as usize,
        );
        let engines = load_engines(rt, &files)?;
        let provider = engines.decoder.provider().to_string();
        let resident = (placement != AsrPlacement::InTurn).then_some(engines);
        Ok(Some(Self { info, mel, rt, files, resident, placement, provider, tokenizer }))
    }

    /// Run `f` on the engines: the resident ones, or (in turn) loaded now and released
    /// when it returns; also says how long the loading took.
    fn with_engines<T>(
        &self,
        f: impl FnOnce(&AsrEngines) -> Result<T, RuntimeError>,
    ) -> Result<(T, f64), RuntimeError> {
        match &self.resident {
            Some(engines) => Ok((f(engines)?, 0.0)),
            None => {
                let started = Instant::now();
                let engines = load_engines(self.rt, &self.files)?;
                let load_ms = started.elapsed().as_secs_f64() * 1e3;
                Ok((f(&engines)?, load_ms))
            }
        }
    }

    /// Where the plan placed the engines.
    pub fn placement(&self) -> AsrPlacement {
        self.placement
    }

    pub fn info(&self) -> &AsrInfo {
        &self.info
    }

    /// Where the engines run (the decoder's provider: it does most of the work).
    pub fn provider(&self) -> String {
        self.provider.clone()
    }

    /// The log-mel features of the first window, `[n_mels, frames]`.
    pub fn features(&self, samples: &[f32]) -> Vec<f32> {
        self.mel.compute(samples)
    }

    /// Recognise the first window of `samples` (16 kHz mono).
    pub fn transcribe(
        &self,
        samples: &[f32],
        task: AsrTask,
        language: Option<&str>,
        cancel: &CancelToken,
    ) -> Result<Transcript, RuntimeError> {
        let started = Instant::now();
        let features = self.features(samples);
        let log_mel_ms = started.elapsed().as_secs_f64() * 1e3;
        let (d, load_ms) = self
            .with_engines(|e| self.decode_up_to(e, &features, task, language, cancel, self.info.max_length as usize))?;
        let text_ids: Vec<u32> =
            d.ids[4..].iter().copied().filter(|&t| t != self.info.end && t < self.info.timestamp_begin).collect();
        let text = self.tokenizer.decode(&text_ids, true).map_err(|e| asr_error(format!("decoding text: {e}")))?;
        Ok(Transcript {
            text: text.trim().to_string(),
            language: d.language,
            task,
            ids: d.ids,
            ms: started.elapsed().as_secs_f64() * 1e3,
            log_mel_ms,
            load_ms,
            encode_ms: d.encode_ms,
            decode_ms: d.decode_ms,
        })
    }

    /// One window of silence through every engine and a few decoder steps, so that the
    /// first request does not pay for lazy initialisation (and TensorRT engine building;
    /// in turn, a built engine is then in the engine cache).
    pub fn warm_up(&self) -> Result<(), RuntimeError> {
        let language = self.info.languages.keys().next().map(String::as_str);
        let (features, cancel) = (self.features(&[]), CancelToken::new());
        self.with_engines(|e| self.decode_up_to(e, &features, AsrTask::Transcribe, language, &cancel, 5)).map(|_| ())
    }

    /// Greedy decoding of one window's features.
    pub fn decode(
        &self,
        features: &[f32],
        task: AsrTask,
        language: Option<&str>,
        cancel: &CancelToken,
    ) -> Result<Decoded, RuntimeError> {
        let max_ids = self.info.max_length as usize;
        Ok(self.with_engines(|e| self.decode_up_to(e, features, task, language, cancel, max_ids))?.0)
    }

    /// [`Transcriber::decode`] on loaded engines, stopped at `max_ids` ids in all.
    fn decode_up_to(
        &self,
        engines: &AsrEngines,
        features: &[f32],
        task: AsrTask,
        language: Option<&str>,
        cancel: &CancelToken,
        max_ids: usize,
    ) -> Result<Decoded, RuntimeError> {
        let i = &self.info;
        let started = Instant::now();
        let input = ArrayD::from_shape_vec(IxDyn(&[1, i.n_mels as usize, self.mel.frames()]), features.to_vec())
            .map_err(|e| asr_error(e.to_string()))?;
        let mut hidden = engines.encoder.run_cancellable(&[(INPUT_FEATURES, input.view())], Some(cancel))?;
        let hidden = hidden.take(ENCODER_HIDDEN)?;
        let mut cross = engines.cross_kv.run_cancellable(&[(ENCODER_HIDDEN, hidden.view())], Some(cancel))?;
        let (cross_k, cross_v) = (cross.take(CROSS_K)?, cross.take(CROSS_V)?);
        let encode_ms = started.elapsed().as_secs_f64() * 1e3;
        let empty =
            ArrayD::<f32>::zeros(IxDyn(&[i.decoder_layers as usize, 1, i.heads as usize, 0, i.head_dim as usize]));
        let step = |ids: &[u32], past_k: &ArrayD<f32>, past_v: &ArrayD<f32>| {
            let ids = ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.iter().map(|&t| t as f32).collect())
                .expect("1 x n ids");
            let feeds = [
                (INPUT_IDS, ids.view()),
                (PAST_K, past_k.view()),
                (PAST_V, past_v.view()),
                (CROSS_K, cross_k.view()),
                (CROSS_V, cross_v.view()),
            ];
            let mut out = engines.decoder.run_cancellable(&feeds, Some(cancel))?;
            Ok::<_, RuntimeError>((
                out.take(LOGITS)?.into_raw_vec_and_offset().0,
                out.take(PRESENT_K)?,
                out.take(PRESENT_V)?,
            ))
        };
        let language = match language {
            Some(code) => code.to_string(),
            None => {
                // transformers' `detect_language`: the start token alone, every id but the
                // languages masked.
                let (logits, _, _) = step(&[i.start], &empty, &empty)?;
                let (code, _) = i
                    .languages
                    .iter()
                    .max_by(|a, b| logits[*a.1 as usize].total_cmp(&logits[*b.1 as usize]).then(b.1.cmp(a.1)))
                    .ok_or_else(|| asr_error("the manifest lists no language"))?;
                code.clone()
            }
        };
        let language_id = *i.languages.get(&language).ok_or_else(|| crate::RequestError {
            field: "asr_language",
            reason: format!("{language:?} is not a language of this model"),
        })?;
        let task_id = match task {
            AsrTask::Translate => i.translate,
            AsrTask::Transcribe => i.transcribe,
        };
        let mut ids = vec![i.start, language_id, task_id, i.no_timestamps];
        let (mut past_k, mut past_v) = (empty.clone(), empty);
        let mut feed = ids.clone();
        let mut first = true;
        while ids.len() < max_ids {
            let (mut logits, k, v) = step(&feed, &past_k, &past_v)?;
            let begin: &[u32] = if first { &i.begin_suppress } else { &[] };
            first = false;
            for &t in i.suppress.iter().chain(begin) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            let next = argmax(&logits) as u32;
            ids.push(next);
            if next == i.end {
                break;
            }
            (past_k, past_v, feed) = (k, v, vec![next]);
        }
        let decode_ms = started.elapsed().as_secs_f64() * 1e3 - encode_ms;
        Ok(Decoded { ids, language, encode_ms, decode_ms })
    }
}

fn load_engines(rt: &OrtRuntime, [encoder, cross_kv, decoder]: &[EngineFile; 3]) -> Result<AsrEngines, RuntimeError> {
    Ok(AsrEngines { encoder: encoder.load(rt)?, cross_kv: cross_kv.load(rt)?, decoder: decoder.load(rt)? })
}

fn read_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, RuntimeError> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| BundleError::Inconsistent(format!("{}: not a tokenizer.json: {e}", path.display())).into())
}
