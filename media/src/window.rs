//! Live windows: a [`Windower`] cuts what a [`crate::Source`] decodes (each frame and
//! audio buffer tagged with the source's own timestamp) into overlapping windows, so a
//! window's frames and its audio are the same stretch of time (opening a live source once
//! per stream would give each stream a different stretch).

use std::collections::VecDeque;

use serde::Serialize;

use super::image::RgbImage;
use super::input::MediaInfo;
use super::source::{Clip, Decoded};

/// What a window held, for the output and for checking that its frames and its audio
/// are the same stretch of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowStats {
    pub frames: usize,
    pub audio_s: f64,
    /// The brightest frame's mean luma (0-255).
    pub luma_peak: f64,
    /// The largest audio sample magnitude (0-1).
    pub audio_peak: f32,
}

/// `[start, end)` of the source's time: its frames in order and its audio as a clip.
#[derive(Debug, Clone)]
pub struct Window {
    pub start: f64,
    pub end: f64,
    /// Every frame of the window; the audio is None when the source has no audio stream.
    pub clip: Clip,
    pub stats: WindowStats,
}

/// Cuts decoded frames and audio into windows of `window` seconds every `hop` seconds of
/// the source's time. It keeps only what the next window still needs.
pub struct Windower {
    /// The source's streams, for each window's clip.
    info: MediaInfo,
    window: f64,
    hop: f64,
    rate: u32,
    has_audio: bool,
    next_start: Option<f64>,
    frames: VecDeque<(f64, RgbImage)>,
    /// Source time of `audio[0]`.
    audio_t0: Option<f64>,
    audio: VecDeque<f32>,
    /// The latest frame time seen.
    video_until: f64,
    /// The source ended: windows whose frames are complete go out with the audio there is.
    finished: bool,
}

/// A frame this much earlier than the latest one is a new timeline (a restarted sender);
/// B-frame reordering never goes back this far.
const JUMP_BACK_S: f64 = 0.5;

/// An audio frame this far off the running sample clock restarts it (a jump in the
/// stream), rather than being padded or overlapped.
const AUDIO_RESYNC_S: f64 = 0.25;

impl Windower {
    pub fn new(info: MediaInfo, window_s: f64, hop_s: f64, sample_rate: u32) -> Self {
        let has_audio = info.audio.is_some();
        Self {
            info,
            window: window_s,
            hop: hop_s,
            rate: sample_rate,
            has_audio,
            next_start: None,
            frames: VecDeque::new(),
            audio_t0: None,
            audio: VecDeque::new(),
            video_until: f64::NEG_INFINITY,
            finished: false,
        }
    }

    /// The source ended (no more audio will come for the last windows).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    fn audio_until(&self) -> f64 {
        self.audio_t0.map_or(f64::NEG_INFINITY, |t0| t0 + self.audio.len() as f64 / f64::from(self.rate))
    }

    pub fn push(&mut self, item: Decoded) {
        match item {
            Decoded::Frame(t, image) => {
                self.next_start.get_or_insert(t);
                let back = t < self.video_until - JUMP_BACK_S;
                let ahead = self.video_until.is_finite() && t > self.video_until + self.window * 4.0;
                if back || ahead {
                    // The timeline jumped (a restarted sender): start again from here.
                    self.frames.clear();
                    self.audio.clear();
                    self.audio_t0 = None;
                    self.next_start = Some(t);
                    self.video_until = f64::NEG_INFINITY;
                }
                self.video_until = self.video_until.max(t);
                self.frames.push_back((t, image));
            }
            Decoded::Audio(t, samples) => {
                let expected = self.audio_until();
                if self.audio_t0.is_none() || (t - expected).abs() > AUDIO_RESYNC_S {
                    self.audio.clear();
                    self.audio_t0 = Some(t);
                } else if t > expected {
                    // A small gap: silence keeps the sample clock on the source's time.
                    let gap = ((t - expected) * f64::from(self.rate)).round() as usize;
                    self.audio.extend(std::iter::repeat_n(0.0, gap));
                }
                self.audio.extend(samples);
            }
        }
    }

    /// The next complete window: its frames are complete once a frame at or after its end
    /// arrived, its audio once the samples reach its end.
    pub fn pop(&mut self) -> Option<Window> {
        loop {
            let start = self.next_start?;
            let end = start + self.window;
            let audio_done =
                !self.has_audio || self.finished || self.audio_until() >= end || self.video_until >= end + 1.0;
            if self.video_until < end || !audio_done {
                return None;
            }
            let frames: Vec<RgbImage> =
                self.frames.iter().filter(|(t, _)| *t >= start && *t < end).map(|(_, f)| f.clone()).collect();
            let audio = self.has_audio.then(|| self.audio_between(start, end));
            self.advance(start + self.hop);
            if frames.is_empty() {
                continue; // a gap in the stream: nothing to analyse in this stretch
            }
            let stats = WindowStats {
                frames: frames.len(),
                audio_s: audio.as_ref().map_or(0.0, |a| a.len() as f64 / f64::from(self.rate)),
                luma_peak: frames.iter().map(RgbImage::mean_luma).fold(0.0, f64::max),
                audio_peak: audio.as_ref().map_or(0.0, |a| a.iter().fold(0.0f32, |m, s| m.max(s.abs()))),
            };
            return Some(Window { start, end, clip: Clip::of_frames(self.info.clone(), frames, audio), stats });
        }
    }

    /// Samples of `[start, end)`, zeros where the audio did not reach.
    fn audio_between(&self, start: f64, end: f64) -> Vec<f32> {
        let n = ((end - start) * f64::from(self.rate)).round() as usize;
        let Some(t0) = self.audio_t0 else { return vec![0.0; n] };
        let first = ((start - t0) * f64::from(self.rate)).round() as i64;
        (0..n as i64)
            .map(|i| usize::try_from(first + i).ok().and_then(|j| self.audio.get(j)).copied().unwrap_or(0.0))
            .collect()
    }

    /// Drop what no window from `next` on needs.
    fn advance(&mut self, next: f64) {
        self.next_start = Some(next);
        while self.frames.front().is_some_and(|(t, _)| *t < next) {
            self.frames.pop_front();
        }
        if let Some(t0) = self.audio_t0 {
            let drop = (((next - t0) * f64::from(self.rate)).round().max(0.0) as usize).min(self.audio.len());
            self.audio.drain(..drop);
            self.audio_t0 = Some(t0 + drop as f64 / f64::from(self.rate));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(audio: bool) -> MediaInfo {
        let stream = crate::StreamInfo {
            index: 0,
            codec: "raw".into(),
            rate: 100.0,
            width: 4,
            height: 4,
            pixel_format: "rgb24".into(),
            channels: 1,
            rotation: 0,
            declared_frames: 0,
        };
        MediaInfo {
            source: "test".into(),
            container: "test".into(),
            duration_s: 0.0,
            video: Some(stream.clone()),
            audio: audio.then_some(stream),
        }
    }

    fn frame(v: u8) -> RgbImage {
        RgbImage::new(4, 4, vec![v; 48])
    }

    #[test]
    fn windows_hold_the_same_stretch_of_frames_and_audio() {
        let mut w = Windower::new(info(true), 2.0, 1.0, 100);
        // 10 fps video from t=10 (a source's own clock), audio in 0.1 s frames.
        for i in 0..60 {
            let t = 10.0 + f64::from(i) * 0.1;
            w.push(Decoded::Audio(t, vec![if (13.0..13.1).contains(&t) { 1.0 } else { 0.0 }; 10]));
            w.push(Decoded::Frame(t, frame(if (13.0..13.1).contains(&t) { 250 } else { 10 })));
        }
        let mut windows = Vec::new();
        while let Some(win) = w.pop() {
            windows.push(win);
        }
        let starts: Vec<f64> = windows.iter().map(|w| w.start).collect();
        assert_eq!(starts, vec![10.0, 11.0, 12.0, 13.0], "source time, every hop");
        for win in &windows {
            assert_eq!(win.clip.frames.len(), 20);
            assert_eq!(win.clip.total, 20);
            assert_eq!(win.clip.audio.as_ref().unwrap().len(), 200);
            let flash = win.start <= 13.0 && 13.0 < win.end;
            assert_eq!(win.stats.luma_peak > 200.0, flash, "{win:?}");
            assert_eq!(win.stats.audio_peak > 0.5, flash, "window {} audio", win.start);
        }
        // Only what the next window needs is kept.
        assert!(w.frames.len() <= 21 && w.audio.len() <= 210);
    }

    #[test]
    fn a_jump_in_the_timeline_starts_the_windows_again() {
        let mut w = Windower::new(info(false), 1.0, 1.0, 100);
        for i in 0..15 {
            w.push(Decoded::Frame(100.0 + f64::from(i) * 0.1, frame(0)));
        }
        assert_eq!(w.pop().map(|x| x.start), Some(100.0));
        for i in 0..15 {
            w.push(Decoded::Frame(1.0 + f64::from(i) * 0.1, frame(0))); // the sender restarted
        }
        assert_eq!(w.pop().map(|x| x.start), Some(1.0));
        // A restart only a little earlier (MPEG-TS senders all start near 1.4 s).
        for i in 0..10 {
            w.push(Decoded::Frame(2.5 + f64::from(i) * 0.1, frame(0)));
        }
        for i in 0..15 {
            w.push(Decoded::Frame(1.4 + f64::from(i) * 0.1, frame(0)));
        }
        let starts: Vec<f64> = std::iter::from_fn(|| w.pop()).map(|x| x.start).collect();
        assert_eq!(starts.first().copied(), Some(1.4), "{starts:?}");
    }
}
