//! Whisper's log-mel front end, as transformers' `WhisperFeatureExtractor` computes it
//! (its numpy path, `_np_extract_fbank_features` over `spectrogram`): the audio cut or
//! zero-padded to the window (30 s), reflect-padded by half an FFT on each side, a
//! periodic Hann window, a real FFT in f64 whose bins are rounded to f32 (numpy stores
//! them as complex64), the power through slaney-normalised slaney-scale mel filters in
//! f64, `log10` of at least 1e-10, the last frame dropped, then floored at the maximum
//! minus 8 and scaled `(x + 4) / 4` in f32.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// The front end of one Whisper checkpoint (its rate, FFT size, hop, bins and window).
pub struct LogMel {
    n_fft: usize,
    hop: usize,
    n_mels: usize,
    chunk: usize,
    window: Vec<f64>,
    /// `[n_fft / 2 + 1][n_mels]`, as transformers' `mel_filter_bank` returns it.
    filters: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl LogMel {
    pub fn new(sample_rate: u32, n_fft: usize, hop: usize, n_mels: usize, chunk: usize) -> Self {
        // numpy's `hanning(n + 1)[:-1]`: the periodic window.
        let window =
            (0..n_fft).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / n_fft as f64).cos()).collect();
        let filters = mel_filters(n_fft / 2 + 1, n_mels, 0.0, f64::from(sample_rate) / 2.0);
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n_fft);
        Self { n_fft, hop, n_mels, chunk, window, filters, fft }
    }

    /// Frames per window (3000 for 30 s at a 160-sample hop).
    pub fn frames(&self) -> usize {
        self.chunk / self.hop
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The features of the first window of `samples` (16 kHz mono): `[n_mels, frames]`,
    /// row-major.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let half = self.n_fft / 2;
        let mut padded = vec![0f32; self.chunk];
        let n = samples.len().min(self.chunk);
        padded[..n].copy_from_slice(&samples[..n]);
        // Reflect padding (the edge sample not repeated), then f64, as numpy does.
        let reflect = |i: isize| -> f64 {
            let last = self.chunk as isize - 1;
            let j = if i < 0 {
                -i
            } else if i > last {
                2 * last - i
            } else {
                i
            };
            f64::from(padded[j as usize])
        };
        let signal: Vec<f64> = (-(half as isize)..(self.chunk + half) as isize).map(reflect).collect();
        let frames = self.frames();
        let bins = half + 1;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut power = vec![0f64; bins];
        let mut out = vec![0f32; self.n_mels * frames];
        for t in 0..frames {
            let start = t * self.hop;
            for (j, x) in input.iter_mut().enumerate() {
                *x = signal[start + j] * self.window[j];
            }
            self.fft.process(&mut input, &mut spectrum).expect("buffers of the planned size");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                let (re, im) = (f64::from(c.re as f32), f64::from(c.im as f32));
                *p = re * re + im * im;
            }
            for m in 0..self.n_mels {
                let mel: f64 = (0..bins).map(|k| self.filters[k * self.n_mels + m] * power[k]).sum();
                out[m * frames + t] = mel.max(1e-10).log10() as f32;
            }
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in &mut out {
            *x = (x.max(max - 8.0) + 4.0) / 4.0;
        }
        out
    }
}

/// numpy's `linspace`: `start + i * step`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = 15.0;

/// The slaney mel scale (linear below 1 kHz, logarithmic above).
fn hz_to_mel(f: f64) -> f64 {
    if f >= MIN_LOG_HZ {
        MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= MIN_LOG_MEL {
        MIN_LOG_HZ * ((6.4f64.ln() / 27.0) * (m - MIN_LOG_MEL)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// transformers' `mel_filter_bank(bins, n_mels, f_min, f_max, norm="slaney",
/// mel_scale="slaney")`: triangles in Hz between mel-spaced edges, each scaled to unit
/// area. `[bins][n_mels]`, f64.
pub fn mel_filters(bins: usize, n_mels: usize, f_min: f64, f_max: f64) -> Vec<f64> {
    let edges: Vec<f64> = linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2).into_iter().map(mel_to_hz).collect();
    let fft_freqs = linspace(0.0, f_max, bins);
    let diff: Vec<f64> = edges.windows(2).map(|w| w[1] - w[0]).collect();
    let mut filters = vec![0f64; bins * n_mels];
    for (k, f) in fft_freqs.iter().enumerate() {
        for m in 0..n_mels {
            let down = -(edges[m] - f) / diff[m];
            let up = (edges[m + 2] - f) / diff[m + 1];
            let area = 2.0 / (edges[m + 2] - edges[m]);
            filters[k * n_mels + m] = 0f64.max(down.min(up)) * area;
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_the_floor_and_the_scale_is_whispers() {
        let mel = LogMel::new(16_000, 400, 160, 80, 480_000);
        let x = mel.compute(&[0.0; 1600]);
        assert_eq!(x.len(), 80 * 3000);
        // log10(1e-10) everywhere: the max is -10, so (-10 + 4) / 4.
        assert!(x.iter().all(|&v| v == -1.5), "{:?}", &x[..4]);
        // Each filter has unit area over Hz (slaney): sum of weight × bin width ≈ 1.
        let f = mel_filters(201, 80, 0.0, 8000.0);
        let area: f64 = (0..201).map(|k| f[k * 80 + 10] * 40.0).sum();
        assert!((area - 1.0).abs() < 0.05, "{area}");
    }
}
