//! One request's state and its stages, one method each, in pipeline order:
//! [`Session::decode_media`] → [`Session::encode_global`] → [`Session::detect_faces`] →
//! [`Session::encode_local`] → [`Session::encode_temporal`] → [`Session::encode_audio`] →
//! [`Session::encode_fusion`] → [`Session::tokenize_prompt`] → [`Session::prefill`] → [`Session::score_labels`] →
//! [`Session::generate`] → [`Session::finish`]. [`Session::run`] calls them all on the
//! request's source read whole; [`Session::run_clip`] on a stretch the caller read (a live
//! window): one path either way, from the clip on. Each stage is timed under its
//! [`Stage`], checks the cancel token first, and shows its inputs to the [`Observer`]
//! (the reference checks' input dump is one). The model's differences are the
//! manifest's data (a face section or a frame window, the waveform or a log-mel, the
//! engines' contract) and each stage reads them; a stage the model lacks does nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use emollama_bundle::contract::{
    engine_io, AUDIO_FEAT, AUDIO_ROW, CLIP, FACES, FEATURES, FRAMES, INPUT_FEATURES, LOCAL_ROW, PIXEL_VALUES,
    TEMPORAL_ROW, VIDEO_FEAT, WAVEFORM,
};
use emollama_bundle::files::FileError;
use emollama_bundle::{BundleError, FrameChoice, GenerationPreset, Role, RowBlock};
use emollama_engines::llm::{GenerateOptions, LlmContext, Sampler, SamplingParams, Segment, StopReason};
use emollama_engines::onnx::Outputs;
use emollama_engines::{CancelToken, EngineError};
use emollama_media::faces::{FaceDetector, FaceReport};
use emollama_media::{
    face_tensor, fetch_url, frames_tensor, global_tensor, read_clip, temporal_tensor, Clip, ClipRequest,
    FrameSelection, MediaError, RgbImage, SourceKind,
};
use ndarray::ArrayD;
use serde::Serialize;

use crate::asr::{AsrTask, Transcript};
use crate::features::{read_features, FeatureFiles, FeaturesError};
use crate::observer::Observer;
use crate::pipeline::Pipeline;
use crate::prompt::{build_prompt, normalise_scores};
use crate::request::{AnalyzeRequest, Mode, Preset};
use crate::stage::{Stage, Timings};
use crate::RuntimeError;

#[derive(Debug, Clone, Serialize)]
pub struct TokenCounts {
    pub prompt: usize,
    pub generated: usize,
    pub decode_per_s: f64,
}

/// Where a result's transcript line came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum TranscriptReport {
    /// Given with the request (or a subtitle file beside the media).
    Request,
    /// Heard by speech recognition.
    Asr { text: String, language: String, task: AsrTask },
}

/// What was read of the source.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MediaSummary {
    pub container: String,
    /// Frames in the stretch read, and how many of them were decoded to RGB for the encoders.
    pub frames: usize,
    pub frames_decoded: usize,
    /// Seconds of audio decoded (None: no audio track, or pre-extracted features replaced it).
    pub audio_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleRef {
    pub id: String,
    pub synthetic: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeResult {
    /// The recognised label (emotion task): from the scores with `--preset fast`, else
    /// from the answer (a label word found in it, else the official extraction).
    pub label: Option<String>,
    /// `eval_emotion.py`'s extraction: last word, anything else → neutral.
    pub label_official: Option<String>,
    pub label_scores: Option<BTreeMap<String, f64>>,
    pub text: String,
    pub task: String,
    pub mode: Mode,
    pub preset: Preset,
    pub transcript_used: bool,
    /// Where the transcript line came from: the request, or speech recognition (with its
    /// text, language and task; its time is the `asr` stage).
    pub transcript: Option<TranscriptReport>,
    pub stop: Option<StopReason>,
    /// The answer's token ids (for checks against a reference).
    pub answer_tokens: Vec<i32>,
    /// What fell back to the official behaviour, and why (no audio, no face, …), and
    /// what runs on a slower device than asked for (a GPU provider that cannot start).
    pub notes: Vec<String>,
    /// What was read of the source.
    pub media: Option<MediaSummary>,
    /// Which face the local and temporal encoders saw (full mode), or why none.
    pub faces: Option<FaceReport>,
    pub timings_ms: Timings,
    pub tokens: TokenCounts,
    pub providers: BTreeMap<String, String>,
    pub bundle: BundleRef,
    pub device: String,
}

/// The face crops each face encoder sees.
#[derive(Debug, Default)]
struct FaceCrops {
    /// For the MAE mean: the tracked face in each examined frame (capped frames).
    local: Vec<RgbImage>,
    /// For VideoMAE: one crop per sampled frame (8 pairs of consecutive frames).
    temporal: Vec<RgbImage>,
}

/// The prompt's token segments around the embedding rows, and the label candidates.
#[derive(Debug, Clone, Default)]
pub struct PromptTokens {
    pub before_rows: Vec<i32>,
    pub after_rows: Vec<i32>,
    pub labels: Vec<&'static str>,
    pub label_ids: Vec<Vec<i32>>,
}

/// One request in progress.
pub struct Session<'p> {
    pipeline: &'p Pipeline,
    req: AnalyzeRequest,
    cancel: CancelToken,
    started: Instant,
    timings: Timings,
    notes: Vec<String>,
    observer: Option<Box<dyn Observer + 'p>>,
    clip: Option<Clip>,
    waveform: Option<Vec<f32>>,
    crops: FaceCrops,
    media: Option<MediaSummary>,
    face_report: Option<FaceReport>,
    /// Pre-extracted features read for this request, until their projector runs.
    features: BTreeMap<RowBlock, Vec<f32>>,
    blocks: BTreeMap<RowBlock, Vec<f32>>,
    /// Encoder outputs that are not rows but another engine's inputs (v2: the CLS, the
    /// video cells and the audio bins, for the fusion), by the contract's names.
    between_engines: BTreeMap<&'static str, ArrayD<f32>>,
    prompt: Option<PromptTokens>,
    ctx: Option<LlmContext>,
    label_scores: Option<BTreeMap<String, f64>>,
    answer: Option<Answer>,
    /// What speech recognition heard, when it filled the transcript line.
    heard: Option<Transcript>,
    /// The local copies of URL sources, removed with the session.
    fetched: Vec<ScratchFile>,
}

/// A file of the scratch folder, removed when dropped.
struct ScratchFile(std::path::PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scratch_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("emollama-fetch-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug, Default)]
struct Answer {
    text: String,
    tokens: Vec<i32>,
    stop: Option<StopReason>,
    decode_per_s: f64,
}

impl<'p> Session<'p> {
    pub(crate) fn new(pipeline: &'p Pipeline, req: AnalyzeRequest, cancel: CancelToken) -> Result<Self, RuntimeError> {
        let session = Self {
            pipeline,
            req,
            cancel,
            started: Instant::now(),
            timings: Timings::new(),
            // A GPU build on a host without a GPU says so in every result, not in the log only.
            notes: pipeline.fallbacks().to_vec(),
            observer: None,
            clip: None,
            waveform: None,
            crops: FaceCrops::default(),
            media: None,
            face_report: None,
            features: BTreeMap::new(),
            blocks: BTreeMap::new(),
            between_engines: BTreeMap::new(),
            prompt: None,
            ctx: None,
            label_scores: None,
            answer: None,
            heard: None,
            fetched: Vec::new(),
        };
        // The merged sampling parameters and the task are checked before any work.
        SamplingParams::validate(&session.sampling())?;
        let model = pipeline.manifest().model;
        if !session.req.task.is_for(model) {
            let reason = format!(
                "task {} is Emotion-LLaMA-v2's; bundle {} holds {model}, trained for emotion and reason (or ask a question)",
                session.req.task.name(),
                pipeline.manifest().id
            );
            return Err(crate::request::RequestError { field: "task", reason }.into());
        }
        Ok(session)
    }

    /// Show every stage's inputs to `observer` (from the next stage on).
    pub fn observe(mut self, observer: impl Observer + 'p) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    pub fn request(&self) -> &AnalyzeRequest {
        &self.req
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Every stage in order on the request's source, read whole, then the result.
    pub fn run(mut self, on_piece: impl FnMut(&str)) -> Result<AnalyzeResult, RuntimeError> {
        self.encode()?;
        self.run_llm(on_piece)
    }

    /// Every stage in order on a stretch the caller read (a live window), then the result.
    pub fn run_clip(mut self, clip: Clip, on_piece: impl FnMut(&str)) -> Result<AnalyzeResult, RuntimeError> {
        self.read_features()?;
        self.take_clip(clip)?;
        self.encode_clip()?;
        self.run_llm(on_piece)
    }

    /// The LLM stages after the encoders, then the result.
    fn run_llm(mut self, on_piece: impl FnMut(&str)) -> Result<AnalyzeResult, RuntimeError> {
        self.tokenize_prompt()?;
        self.prefill()?;
        self.score_labels()?;
        self.generate(on_piece)?;
        Ok(self.finish())
    }

    fn timed<T>(
        &mut self,
        stage: Stage,
        work: impl FnOnce(&mut Self) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        if self.cancel.is_cancelled() {
            return Err(EngineError::Cancelled.into());
        }
        let t = Instant::now();
        let out = work(self)?;
        self.timings.insert(stage, t.elapsed().as_secs_f64() * 1e3);
        Ok(out)
    }

    /// The media and encoder stages: everything [`Session::rows`] needs.
    pub fn encode(&mut self) -> Result<(), RuntimeError> {
        self.decode_media()?;
        self.encode_clip()
    }

    /// The encoder stages on the clip's frames and audio.
    fn encode_clip(&mut self) -> Result<(), RuntimeError> {
        self.transcribe()?;
        self.encode_global()?;
        self.detect_faces()?;
        self.encode_local()?;
        self.encode_temporal()?;
        self.encode_audio()?;
        self.encode_fusion()
    }

    /// Show `input` to the observer, run `role`'s engine on it under `stage`, return
    /// its outputs.
    fn run_encoder(
        &mut self,
        stage: Stage,
        role: Role,
        name: &str,
        input: &ArrayD<f32>,
    ) -> Result<Outputs, RuntimeError> {
        self.observe_tensor(name, input)?;
        let cancel = self.cancel.clone();
        self.timed(stage, |s| s.pipeline.encoders().run(&role, &[(name, input.view())], &cancel))
    }

    fn observe_tensor(&mut self, name: &str, a: &ArrayD<f32>) -> Result<(), RuntimeError> {
        match self.observer.as_mut() {
            Some(o) => o.tensor(name, a),
            None => Ok(()),
        }
    }

    fn full(&self) -> bool {
        self.req.mode == Mode::Full
    }

    /// The global encoder's frame (the manifest's choice).
    fn global_selection(&self) -> FrameSelection {
        match self.pipeline.manifest().preprocess.global.frame {
            FrameChoice::First => FrameSelection::First,
            FrameChoice::Middle => FrameSelection::Middle,
        }
    }

    /// Rows to their blocks, the other outputs kept for the engines that take them, as
    /// `role`'s contract says.
    fn keep_outputs(&mut self, role: Role, mut out: Outputs) -> Result<(), RuntimeError> {
        let io = engine_io(self.pipeline.manifest().model, &role).ok_or(BundleError::MissingRole(role))?;
        for (name, block) in io.outputs {
            let a = out.take(name)?;
            if let Some(b) = block {
                self.blocks.insert(*b, a.into_iter().collect());
            } else {
                self.between_engines.insert(name, a);
            }
        }
        Ok(())
    }

    /// v2's temporal frames: the manifest's seeded window over the whole clip.
    fn window_selection(&self) -> Option<FrameSelection> {
        let t = &self.pipeline.manifest().preprocess.temporal;
        t.window.as_ref().map(|w| FrameSelection::SeededWindow { frames: t.frames as usize, seed: w.seed })
    }

    /// In full mode, the face frames: every frame up to the cap (the MAE mean) and
    /// VideoMAE's pairs over the whole clip (none when features replace both face
    /// encoders, or for a model without faces).
    fn face_selections(&self) -> Option<[FrameSelection; 2]> {
        let m = self.pipeline.manifest();
        let t = &m.preprocess.temporal;
        (self.full() && !self.req.features.covers_faces() && m.preprocess.face.is_some()).then(|| {
            [
                FrameSelection::AllCapped(self.pipeline.config().limits.max_face_frames),
                FrameSelection::VideoMae {
                    segments: t.segments as usize,
                    frames_per_segment: t.frames_per_segment as usize,
                },
            ]
        })
    }

    /// Read the request's source once: the frames every encoder needs and the audio at
    /// the manifest's rate (unless pre-extracted features replace HuBERT), from the
    /// request's separate audio source when it has one. An HTTP(S) URL is fetched once
    /// into the scratch folder first, and the local copy read.
    pub fn decode_media(&mut self) -> Result<(), RuntimeError> {
        self.read_features()?;
        let mut frames = vec![self.global_selection()];
        frames.extend(self.face_selections().into_iter().flatten());
        frames.extend(self.window_selection());
        let audio_wanted = !self.features.contains_key(&RowBlock::Audio);
        let audio_source = self.req.audio.clone().filter(|_| audio_wanted);
        let request = ClipRequest { frames, audio: audio_wanted && audio_source.is_none() };
        let opts = self.pipeline.source_options(self.req.still);
        let media = self.local_copy(&self.req.media.clone())?;
        let audio_media = audio_source.as_deref().map(|a| self.local_copy(a)).transpose()?;
        // Errors name the request's sources, not the local copies of URLs.
        let (source, audio_name) = (self.req.shown_media().to_string(), self.req.shown_audio().map(str::to_string));
        let clip = self.timed(Stage::Decode, |s| {
            let mut clip = read_clip(&media, &opts, &request, &s.cancel).map_err(|e| e.about(&source))?;
            if let (Some(path), Some(name)) = (&audio_media, &audio_name) {
                let audio = ClipRequest { frames: Vec::new(), audio: true };
                let track = read_clip(path, &opts, &audio, &s.cancel).map_err(|e| e.about(name))?;
                if track.audio.is_none() {
                    return Err(MediaError::NoAudio { source_name: name.clone() }.into());
                }
                clip.audio = track.audio;
            }
            Ok(clip)
        })?;
        self.take_clip(clip)
    }

    /// The file to read for `source`: itself, or for an HTTP(S) URL its local copy in
    /// the scratch folder (kept for the session; fetch times add up).
    fn local_copy(&mut self, source: &str) -> Result<String, RuntimeError> {
        if SourceKind::of(source) != SourceKind::Url {
            return Ok(source.to_string());
        }
        let local = ScratchFile(self.pipeline.config().scratch_dir.join(scratch_name()));
        let limits = self.pipeline.config().limits.clone();
        let started = Instant::now();
        fetch_url(source, &local.0, &limits, &self.cancel)?;
        *self.timings.entry(Stage::Fetch).or_default() += started.elapsed().as_secs_f64() * 1e3;
        let path = local.0.to_string_lossy().into_owned();
        self.fetched.push(local);
        Ok(path)
    }

    /// Keep the clip for the encoder stages; say what its audio lacks.
    fn take_clip(&mut self, mut clip: Clip) -> Result<(), RuntimeError> {
        if clip.frames.is_empty() {
            return Err(MediaError::NoFrames { source_name: self.req.shown_media().into() }.into());
        }
        let rate = f64::from(self.pipeline.manifest().preprocess.audio.sample_rate);
        self.media = Some(MediaSummary {
            container: clip.info.container.clone(),
            frames: clip.total,
            frames_decoded: clip.frames.len(),
            audio_s: clip.audio.as_ref().map(|a| a.len() as f64 / rate),
        });
        self.waveform = clip.audio.take().filter(|w| !w.is_empty());
        if self.waveform.is_none() && !self.features.contains_key(&RowBlock::Audio) {
            self.notes.push("no audio track: the audio row is the zero-feature row (projector bias)".into());
        }
        self.clip = Some(clip);
        self.observe_zero_rows()
    }

    /// Read and check the request's features files, before any media work.
    fn read_features(&mut self) -> Result<(), RuntimeError> {
        for block in FeatureFiles::BLOCKS {
            if let Some(path) = self.req.features.get(block) {
                let width = self.pipeline.projector(block)?.width;
                let cancel = self.cancel.clone();
                let values = read_features(path, block, width, &|| cancel.is_cancelled()).map_err(|e| match e {
                    FeaturesError::File(FileError::Stopped { .. }) => RuntimeError::from(EngineError::Cancelled),
                    e => e.into(),
                })?;
                self.features.insert(block, values);
            }
        }
        Ok(())
    }

    /// The `block` row from its pre-extracted features through the projector-only engine
    /// (timed as that block's encoder stage); false when the request has none for it.
    fn project_features(&mut self, block: RowBlock, stage: Stage) -> Result<bool, RuntimeError> {
        let Some(features) = self.features.remove(&block) else { return Ok(false) };
        let input = ArrayD::from_shape_vec(vec![1, features.len()], features).expect("1 x width");
        self.observe_tensor(&format!("{block}_features"), &input)?;
        let cancel = self.cancel.clone();
        let (mut out, output) = self.timed(stage, |s| {
            let p = s.pipeline.projector(block)?;
            Ok((p.engine.run_cancellable(&[(FEATURES, input.view())], Some(&cancel))?, p.output))
        })?;
        self.blocks.insert(block, out.take(output)?.into_iter().collect());
        let path = self.req.features.get(block).map(|p| p.display().to_string()).unwrap_or_default();
        self.notes.push(format!("the {block} row is from pre-extracted features ({path})"));
        Ok(true)
    }

    fn observe_zero_rows(&mut self) -> Result<(), RuntimeError> {
        let m = self.pipeline.manifest();
        let shape = vec![m.model.zero_row_blocks().len(), m.llm.embedding_width as usize];
        let zero = ArrayD::from_shape_vec(shape, self.pipeline.zero_rows.clone()).expect("blocks x width");
        self.observe_tensor("zero_rows", &zero)
    }

    fn clip(&self) -> Result<&Clip, RuntimeError> {
        self.clip.as_ref().ok_or(RuntimeError::StageOrder { stage: "decode_media" })
    }

    /// The transcript line from speech recognition, when the request gives none and
    /// does not turn it off: the first 30 s of the clip's audio (translated to English
    /// unless asked otherwise). Without the engines or without audio, a note says why
    /// the line is missing.
    pub fn transcribe(&mut self) -> Result<(), RuntimeError> {
        if self.given_transcript().is_some() || !self.req.asr.enabled {
            return Ok(());
        }
        let Some(asr) = self.pipeline.asr() else {
            self.notes.push(
                "no transcript: none was given and the bundle has no speech recognition engines (emollama_export.whisper \
                 adds them)"
                    .into(),
            );
            return Ok(());
        };
        let Some(all) = self.waveform.as_deref() else {
            self.notes.push("no transcript: none was given and there is no audio to recognise".into());
            return Ok(());
        };
        // Only the first window is heard: copy that much, not the whole track.
        let window = asr.info().chunk_samples as usize;
        let (waveform, longer) = (all[..all.len().min(window)].to_vec(), all.len() > window);
        let rate = self.pipeline.manifest().preprocess.audio.sample_rate;
        if longer {
            let heard = f64::from(asr.info().chunk_samples) / f64::from(rate);
            self.notes.push(format!("speech recognition heard the first {heard:.0} s of the audio only"));
        }
        let (task, language) = (self.req.asr.task, self.req.asr.language.clone());
        let heard = self.timed(Stage::Asr, |s| asr.transcribe(&waveform, task, language.as_deref(), &s.cancel))?;
        self.heard = Some(heard);
        Ok(())
    }

    /// The request's own transcript (non-empty).
    fn given_transcript(&self) -> Option<&str> {
        self.req.transcript.as_deref().filter(|t| !t.trim().is_empty())
    }

    /// The transcript line's text: the request's, else what speech recognition heard.
    fn transcript(&self) -> Option<&str> {
        self.given_transcript().or(self.heard.as_ref().map(|h| h.text.as_str()).filter(|t| !t.trim().is_empty()))
    }

    /// The global frame, resized and normalised, through the global engine: the patch
    /// rows and the CLS row.
    pub fn encode_global(&mut self) -> Result<(), RuntimeError> {
        let g = self.pipeline.manifest().preprocess.global.clone();
        let frame =
            self.clip()?.select(self.global_selection()).first().copied().cloned().ok_or_else(|| {
                RuntimeError::Media(MediaError::NoFrames { source_name: self.req.shown_media().into() })
            })?;
        let mut pixels = global_tensor(&frame, g.image_size, g.resize, g.mean, g.std).into_dyn();
        if self.req.task.zeroed_inputs().image {
            pixels.fill(0.0); // after normalisation, as the training zeroed it: still encoded
        }
        let out = self.run_encoder(Stage::GlobalEncoder, Role::GlobalEngine, PIXEL_VALUES, &pixels)?;
        self.keep_outputs(Role::GlobalEngine, out)
    }

    /// Faces in the capped frames (MAE) and in VideoMAE's frames, tracked and aligned.
    pub fn detect_faces(&mut self) -> Result<(), RuntimeError> {
        if self.pipeline.manifest().preprocess.face.is_none() {
            return Ok(()); // a model without face encoders
        }
        if self.req.features.covers_faces() {
            return Ok(()); // both face rows come from features
        }
        let Some([capped, videomae]) = self.face_selections() else {
            self.notes.push("official-demo mode: local and temporal rows are the zero-feature rows".into());
            return Ok(());
        };
        let encoders = self.pipeline.encoders();
        if !encoders.has(&Role::LocalEngine) && !encoders.has(&Role::TemporalEngine) {
            return Ok(()); // nothing would use the faces (encode_local and encode_temporal say so)
        }
        if self.pipeline.faces.is_empty() {
            self.notes
                .push("the bundle has no face detector: local and temporal rows are the zero-feature rows".into());
            return Ok(());
        }
        let (crops, found) = self.timed(Stage::Faces, |s| {
            let clip = s.clip()?;
            let capped = capped.indices(clip.total);
            let videomae = videomae.indices(clip.total);
            let mut wanted: Vec<usize> = capped.iter().chain(&videomae).copied().collect();
            wanted.sort_unstable();
            wanted.dedup();
            let frames: Vec<(usize, &RgbImage)> =
                wanted.iter().filter_map(|i| clip.frames.get(i).map(|f| (*i, f))).collect();
            let found = FaceDetector::find(&s.pipeline.faces, &frames, &s.pipeline.config().faces, &s.cancel)?;
            let by_frame: BTreeMap<usize, &RgbImage> = found.crops.iter().map(|(i, _, crop)| (*i, crop)).collect();
            let crops = FaceCrops {
                local: capped.iter().filter_map(|i| by_frame.get(i).map(|c| (*c).clone())).collect(),
                temporal: if by_frame.is_empty() {
                    Vec::new()
                } else {
                    videomae.iter().map(|i| nearest(&by_frame, *i).clone()).collect()
                },
            };
            Ok((crops, found))
        })?;
        if let Some(o) = self.observer.as_mut() {
            o.faces(self.clip.as_ref().expect("read above"), &found)?;
        }
        if found.is_empty() {
            let why = found.report.reason.clone().unwrap_or_else(|| "no face found".into());
            self.notes.push(format!("{why}: local and temporal rows are the zero-feature rows (as the official demo)"));
        }
        self.face_report = Some(found.report);
        self.crops = crops;
        Ok(())
    }

    /// The MAE mean over the face crops, projected (the local row).
    pub fn encode_local(&mut self) -> Result<(), RuntimeError> {
        let images = std::mem::take(&mut self.crops.local);
        if self.pipeline.manifest().rows.local == 0 {
            return Ok(()); // a model without the local row
        }
        if self.project_features(RowBlock::Local, Stage::LocalEncoder)? {
            return Ok(());
        }
        if !self.pipeline.encoders().has(&Role::LocalEngine) {
            self.notes.push("the bundle has no local (MAE) engine: the local row is the zero-feature row".into());
            return self.zero_row(RowBlock::Local);
        }
        if images.is_empty() {
            return self.zero_row(RowBlock::Local);
        }
        let f = self
            .pipeline
            .manifest()
            .preprocess
            .face
            .as_ref()
            .ok_or(BundleError::Inconsistent("a local engine without preprocess.face".into()))?;
        let faces = face_tensor(&images, f.image_size, f.resize, f.scale).into_dyn();
        let mut out = self.run_encoder(Stage::LocalEncoder, Role::LocalEngine, FACES, &faces)?;
        self.blocks.insert(RowBlock::Local, out.take(LOCAL_ROW)?.into_iter().collect());
        Ok(())
    }

    /// VideoMAE over its sampled frames' face crops, projected (the temporal row); v2:
    /// the second EVA over the window's whole frames (its rows and cells).
    pub fn encode_temporal(&mut self) -> Result<(), RuntimeError> {
        if let Some(selection) = self.window_selection() {
            if self.req.task.zeroed_inputs().video {
                return self.zero_features(VIDEO_FEAT, RowBlock::Temporal);
            }
            let t = self.pipeline.manifest().preprocess.temporal.clone();
            let w = t.window.as_ref().expect("a window selection has its window");
            let frames = self.clip()?.select(selection);
            if frames.len() != t.frames as usize {
                return Err(MediaError::NoFrames { source_name: self.req.shown_media().into() }.into());
            }
            let input = frames_tensor(&frames, t.image_size, w.resize, w.mean, w.std).into_dyn();
            let out = self.run_encoder(Stage::TemporalEncoder, Role::TemporalEngine, FRAMES, &input)?;
            return self.keep_outputs(Role::TemporalEngine, out);
        }
        let images = std::mem::take(&mut self.crops.temporal);
        if self.project_features(RowBlock::Temporal, Stage::TemporalEncoder)? {
            return Ok(());
        }
        if !self.pipeline.encoders().has(&Role::TemporalEngine) {
            self.notes
                .push("the bundle has no temporal (VideoMAE) engine: the temporal row is the zero-feature row".into());
            return self.zero_row(RowBlock::Temporal);
        }
        if images.is_empty() {
            return self.zero_row(RowBlock::Temporal);
        }
        let p = &self.pipeline.manifest().preprocess;
        let f = p.face.as_ref().ok_or(BundleError::Inconsistent("a temporal engine without preprocess.face".into()))?;
        let clip = temporal_tensor(&images, p.temporal.image_size, f.resize, f.scale).into_dyn();
        let mut out = self.run_encoder(Stage::TemporalEncoder, Role::TemporalEngine, CLIP, &clip)?;
        self.blocks.insert(RowBlock::Temporal, out.take(TEMPORAL_ROW)?.into_iter().collect());
        Ok(())
    }

    /// HuBERT over the waveform, projected (the audio row); v2: Whisper's encoder over
    /// the log-mel window (its rows and bins; without audio, zero bins as the official
    /// training fed a missing modality, and the zero-feature rows).
    pub fn encode_audio(&mut self) -> Result<(), RuntimeError> {
        if self.project_features(RowBlock::Audio, Stage::AudioEncoder)? {
            return Ok(());
        }
        if let Some(mel) = &self.pipeline.audio_log_mel {
            let zeroed = self.req.task.zeroed_inputs().audio;
            let Some(w) = self.waveform.take().filter(|_| !zeroed) else {
                return self.zero_features(AUDIO_FEAT, RowBlock::Audio);
            };
            let features = mel.compute(&w);
            let shape = vec![1, mel.n_mels(), mel.frames()];
            let input = ArrayD::from_shape_vec(shape, features).expect("n_mels x frames");
            let out = self.run_encoder(Stage::AudioEncoder, Role::AudioEngine, INPUT_FEATURES, &input)?;
            return self.keep_outputs(Role::AudioEngine, out);
        }
        let Some(w) = self.waveform.take() else {
            return self.zero_row(RowBlock::Audio);
        };
        let wave = ArrayD::from_shape_vec(vec![1, w.len()], w).expect("1 x samples");
        let mut out = self.run_encoder(Stage::AudioEncoder, Role::AudioEngine, WAVEFORM, &wave)?;
        self.blocks.insert(RowBlock::Audio, out.take(AUDIO_ROW)?.into_iter().collect());
        Ok(())
    }

    /// ConvProAttention over the other encoders' outputs, projected (v2's fusion rows);
    /// nothing for a model without it.
    pub fn encode_fusion(&mut self) -> Result<(), RuntimeError> {
        if !self.pipeline.encoders().has(&Role::FusionEngine) {
            return Ok(());
        }
        let io = engine_io(self.pipeline.manifest().model, &Role::FusionEngine)
            .ok_or(BundleError::MissingRole(Role::FusionEngine))?;
        let mut inputs = Vec::with_capacity(io.inputs.len());
        for name in io.inputs {
            let a =
                self.between_engines.remove(name).ok_or(RuntimeError::StageOrder { stage: "the encoder stages" })?;
            self.observe_tensor(name, &a)?;
            inputs.push((*name, a));
        }
        let cancel = self.cancel.clone();
        let out = self.timed(Stage::FusionEncoder, |s| {
            let views: Vec<_> = inputs.iter().map(|(n, a)| (*n, a.view())).collect();
            s.pipeline.encoders().run(&Role::FusionEngine, &views, &cancel)
        })?;
        self.keep_outputs(Role::FusionEngine, out)
    }

    /// Zero features for the fusion's input `name` and the zero-feature rows for `block`:
    /// a modality the clip lacks or the task leaves out.
    fn zero_features(&mut self, name: &'static str, block: RowBlock) -> Result<(), RuntimeError> {
        let shape = self.declared_input(Role::FusionEngine, name)?;
        self.between_engines.insert(name, ArrayD::zeros(shape));
        self.zero_row(block)
    }

    /// The fixed shape `role`'s file declares for its input `name`.
    fn declared_input(&self, role: Role, name: &str) -> Result<Vec<usize>, RuntimeError> {
        let e = self.pipeline.bundle().required(&role)?;
        let spec = e.inputs.iter().find(|i| i.name == name);
        let shape: Option<Vec<usize>> =
            spec.and_then(|s| s.shape.iter().map(|d| d.fixed().map(|n| n as usize)).collect());
        shape.ok_or_else(|| BundleError::Inconsistent(format!("{}: input {name} needs a fixed shape", e.path)).into())
    }

    /// Use the zero-feature rows (the projector bias, once per row of the block) for
    /// `block`: no input for its encoder.
    fn zero_row(&mut self, block: RowBlock) -> Result<(), RuntimeError> {
        let m = self.pipeline.manifest();
        let i = m
            .model
            .zero_row_blocks()
            .iter()
            .position(|b| *b == block)
            .ok_or_else(|| BundleError::Inconsistent(format!("{block} has no zero-feature row in {}", m.model)))?;
        let width = m.llm.embedding_width as usize;
        let row = &self.pipeline.zero_rows[i * width..(i + 1) * width];
        self.blocks.insert(block, row.repeat(m.rows.of(block) as usize));
        Ok(())
    }

    /// The embedding rows in the manifest's `row_order` (row-major, width floats each).
    pub fn rows(&self) -> Result<Vec<f32>, RuntimeError> {
        let m = self.pipeline.manifest();
        let mut rows = Vec::with_capacity(m.rows.total() as usize * m.llm.embedding_width as usize);
        for block in &m.prompt.row_order {
            let b = self.blocks.get(block).ok_or(RuntimeError::StageOrder { stage: "the encoder stages" })?;
            rows.extend_from_slice(b);
        }
        Ok(rows)
    }

    /// The prompt text around the rows, tokenized; the label candidates.
    pub fn tokenize_prompt(&mut self) -> Result<(), RuntimeError> {
        self.tokenize_prompt_text()?;
        self.fit_heard_transcript()?;
        let max_new = self.max_new_tokens();
        if let (Some(o), Some(prompt)) = (self.observer.as_mut(), self.prompt.as_ref()) {
            o.prompt(prompt, max_new)?;
        }
        Ok(())
    }

    fn tokenize_prompt_text(&mut self) -> Result<(), RuntimeError> {
        let prompt = self.timed(Stage::Prompt, |s| {
            let m = s.pipeline.manifest();
            let text = build_prompt(m.model, s.req.layout, &s.req.task, s.transcript(), &m.prompt.placeholder);
            let llm = s.pipeline.llm();
            let labels: Vec<&'static str> = s.req.task.labels_for(m.model).unwrap_or_default().to_vec();
            let before_rows = match &m.prompt.before_rows_ids {
                Some(ids) => ids.clone(),
                None => llm.tokenize(&text.before_rows, true, true)?,
            };
            Ok(PromptTokens {
                before_rows,
                after_rows: llm.tokenize(&text.after_rows, false, true)?,
                label_ids: labels.iter().map(|l| llm.tokenize(l, false, false)).collect::<Result<_, _>>()?,
                labels,
            })
        })?;
        self.prompt = Some(prompt);
        Ok(())
    }

    /// A recognised transcript is cut, words from its end, until the prompt leaves room
    /// for the answer (its length, at most a quarter of the context): speech recognition
    /// on noise can write 400 words. A given transcript is the client's and is refused
    /// instead (`check_fits`).
    fn fit_heard_transcript(&mut self) -> Result<(), RuntimeError> {
        let n_ctx = self.pipeline.config().n_ctx as usize;
        let limit = n_ctx - (self.max_new_tokens() as usize).min(n_ctx / 4);
        let Some(full) = self.heard.as_ref().map(|h| h.text.clone()) else { return Ok(()) };
        if self.given_transcript().is_some() || self.prompt_len() <= limit {
            return Ok(());
        }
        let words: Vec<&str> = full.split_whitespace().collect();
        let mut keep = words.len();
        while self.prompt_len() > limit && keep > 0 {
            let over = self.prompt_len() - limit;
            keep = keep.saturating_sub(over.div_ceil(2).max(1));
            if let Some(h) = self.heard.as_mut() {
                h.text = words[..keep].join(" ");
            }
            self.tokenize_prompt_text()?;
        }
        self.notes
            .push(format!("the recognised transcript was cut to {keep} of {} words to fit the context", words.len()));
        Ok(())
    }

    fn prompt_tokens(&self) -> Result<&PromptTokens, RuntimeError> {
        self.prompt.as_ref().ok_or(RuntimeError::StageOrder { stage: "tokenize_prompt" })
    }

    /// Refuse a prompt that cannot fit the context, before any media work (the service
    /// checks a request this way before admitting it to a slot).
    pub fn check_fits(&mut self) -> Result<(), RuntimeError> {
        if self.prompt.is_none() {
            self.tokenize_prompt()?;
        }
        let needed = self.prompt_len() + 1;
        let n_ctx = self.pipeline.config().n_ctx;
        if needed > n_ctx as usize {
            return Err(EngineError::ContextOverflow { needed, n_ctx }.into());
        }
        Ok(())
    }

    /// Prompt positions: the text tokens and the rows.
    pub fn prompt_len(&self) -> usize {
        let m = self.pipeline.manifest();
        self.prompt.as_ref().map_or(0, |p| p.before_rows.len() + p.after_rows.len()) + m.rows.total() as usize
    }

    /// Text tokens, rows, text tokens into a (pooled, cleared) LLM context.
    pub fn prefill(&mut self) -> Result<(), RuntimeError> {
        let rows = self.rows()?;
        let mut ctx = self.pipeline.take_context()?;
        let result = self.timed(Stage::Prefill, |s| {
            let p = s.prompt_tokens()?;
            let segments =
                [Segment::Tokens(&p.before_rows), Segment::Embeddings(&rows), Segment::Tokens(&p.after_rows)];
            ctx.prefill_cancellable(&segments, false, Some(&s.cancel))?;
            Ok(())
        });
        self.ctx = Some(ctx); // returned to the pool when the session ends, whatever happened
        result
    }

    /// The LLM context, after [`Session::prefill`] (for checks).
    pub fn context(&self) -> Option<&LlmContext> {
        self.ctx.as_ref()
    }

    /// Whether the task's answer is one of a closed label set (emotion; v2's sentiment
    /// and intent), whose labels are scored.
    fn has_labels(&self) -> bool {
        self.req.task.labels_for(self.pipeline.manifest().model).is_some()
    }

    /// Label probabilities from one continuation per label (tasks with labels; always
    /// with the fast preset, else when asked for).
    pub fn score_labels(&mut self) -> Result<(), RuntimeError> {
        if !(self.has_labels() && (self.req.scores || self.req.preset == Preset::Fast)) {
            return Ok(());
        }
        let scores = self.timed(Stage::LabelScores, |s| {
            let p = s.prompt.as_ref().ok_or(RuntimeError::StageOrder { stage: "tokenize_prompt" })?;
            let ctx = s.ctx.as_mut().ok_or(RuntimeError::StageOrder { stage: "prefill" })?;
            let probs = normalise_scores(&ctx.continuation_logprobs(&p.label_ids)?);
            Ok(p.labels.iter().map(|l| l.to_string()).zip(probs).collect::<BTreeMap<_, _>>())
        })?;
        self.label_scores = Some(scores);
        Ok(())
    }

    /// The manifest's generation preset for this request (the fast preset generates
    /// only for tasks other than emotion, with the eval settings).
    fn preset(&self) -> &GenerationPreset {
        let g = &self.pipeline.manifest().generation;
        match self.req.preset {
            Preset::Demo => &g.demo,
            Preset::Eval | Preset::Fast => &g.eval,
        }
    }

    fn max_new_tokens(&self) -> u32 {
        self.req.max_new_tokens.unwrap_or(self.preset().max_new_tokens)
    }

    /// The preset's sampling with the request's overrides.
    fn sampling(&self) -> SamplingParams {
        let p = self.preset();
        SamplingParams {
            temperature: self.req.temperature.unwrap_or(p.temperature),
            top_k: self.req.top_k.unwrap_or(p.top_k) as usize,
            top_p: self.req.top_p.unwrap_or(p.top_p),
            repetition_penalty: self.req.repetition_penalty.unwrap_or(p.repetition_penalty),
            seed: self.req.seed,
        }
    }

    /// The answer, streamed to `on_piece`, with the preset's stop strings and position
    /// cap (the demo drops rows past 2000 positions; this shortens the answer instead).
    pub fn generate(&mut self, mut on_piece: impl FnMut(&str)) -> Result<(), RuntimeError> {
        if self.req.preset == Preset::Fast && self.has_labels() {
            return Ok(());
        }
        let preset = self.preset().clone();
        let cap = preset.max_positions.map_or(usize::MAX, |m| (m as usize).saturating_sub(self.prompt_len()).max(1));
        let opts = GenerateOptions {
            max_new_tokens: (self.max_new_tokens() as usize).min(cap),
            stop_strings: preset.stop_strings.iter().chain(&self.req.stop).cloned().collect(),
        };
        let mut sampler = Sampler::new(self.sampling())?;
        let before_generation = self.started.elapsed().as_secs_f64() * 1e3;
        let g = self.timed(Stage::Generation, |s| {
            let ctx = s.ctx.as_mut().ok_or(RuntimeError::StageOrder { stage: "prefill" })?;
            Ok(ctx.generate(&mut sampler, &opts, Some(&s.cancel), |piece| {
                on_piece(piece);
                std::ops::ControlFlow::Continue(())
            })?)
        })?;
        // Time to first token, from the start of the request.
        self.timings.insert(Stage::FirstToken, before_generation + g.first_token_ms);
        self.answer = Some(Answer {
            text: g.text.trim().to_string(),
            decode_per_s: g.decode_per_s(),
            tokens: g.tokens,
            stop: Some(g.stop),
        });
        Ok(())
    }

    fn transcript_report(&self) -> Option<TranscriptReport> {
        if self.given_transcript().is_some() {
            return Some(TranscriptReport::Request);
        }
        let h = self.heard.as_ref().filter(|h| !h.text.trim().is_empty())?;
        Some(TranscriptReport::Asr { text: h.text.clone(), language: h.language.clone(), task: h.task })
    }

    /// The result: label (from the scores with the fast preset, else from the answer),
    /// timings, counts.
    pub fn finish(mut self) -> AnalyzeResult {
        let answer = self.answer.take().unwrap_or_default();
        let model = self.pipeline.manifest().model;
        let (label, label_official) = match (&self.label_scores, self.req.preset) {
            (Some(s), Preset::Fast) => {
                let best = s.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(l, _)| l.clone());
                (best.clone(), best)
            }
            _ => match self.req.task.extract(model, &answer.text) {
                Some(e) => (Some(e.robust.unwrap_or_else(|| e.official.clone())), Some(e.official)),
                None => (None, None),
            },
        };
        self.timings.insert(Stage::Total, self.started.elapsed().as_secs_f64() * 1e3);
        let m = self.pipeline.manifest();
        AnalyzeResult {
            label,
            label_official,
            label_scores: self.label_scores.take(),
            text: answer.text,
            task: self.req.task.name().into(),
            mode: self.req.mode,
            preset: self.req.preset,
            transcript_used: self.transcript().is_some(),
            transcript: self.transcript_report(),
            stop: answer.stop,
            notes: std::mem::take(&mut self.notes),
            media: self.media.take(),
            faces: self.face_report.take(),
            timings_ms: std::mem::take(&mut self.timings),
            tokens: TokenCounts {
                prompt: self.prompt_len(),
                generated: answer.tokens.len(),
                decode_per_s: answer.decode_per_s,
            },
            answer_tokens: answer.tokens,
            providers: self.pipeline.providers(),
            bundle: BundleRef { id: m.id.clone(), synthetic: m.synthetic },
            device: self.pipeline.config().device.clone(),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            self.pipeline.return_context(ctx);
        }
    }
}

/// The crop of frame `i`, else of the nearest frame with a face (earlier on ties): a
/// VideoMAE frame whose face was missed takes its neighbour's, as the official loader
/// only ever sees frames with a face.
fn nearest<'a>(found: &BTreeMap<usize, &'a RgbImage>, i: usize) -> &'a RgbImage {
    let after = found.range(i..).next();
    let before = found.range(..i).next_back();
    match (before, after) {
        (Some((b, img_b)), Some((a, img_a))) => {
            if i - b <= a - i {
                img_b
            } else {
                img_a
            }
        }
        (Some((_, img)), None) | (None, Some((_, img))) => img,
        (None, None) => unreachable!("called with at least one crop"),
    }
}
