//! Audio resampled to 16 kHz mono f32 exactly as `ffmpeg -i in -ac 1 -ar 16000 -f f32le`
//! does it (MERTools' extraction, spec §1.2): frame by frame through libswresample, and
//! its filter tail drained at the end.

use ff::format::sample::{Sample, Type as SampleType};
use ff::software::resampling;
use ff::util::channel_layout::ChannelLayout;
use ff::util::frame::audio::Audio;
use ffmpeg_next as ff;

/// One decoded frame resampled to mono f32 at `rate`, appended to `out`; the resampler
/// is made for the stream on its first frame.
pub(crate) fn resample_into(
    frame: &mut Audio,
    resampler: &mut Option<resampling::Context>,
    rate: u32,
    out: &mut Vec<f32>,
) -> Result<(), ff::Error> {
    // FFmpeg < 7 may leave the layout empty: derive it from the channel count.
    if frame.channel_layout().is_empty() {
        frame.set_channel_layout(ChannelLayout::default(i32::from(frame.channels().max(1))));
    }
    if resampler.is_none() {
        *resampler = Some(resampling::Context::get(
            frame.format(),
            frame.channel_layout(),
            frame.rate(),
            Sample::F32(SampleType::Packed),
            ChannelLayout::MONO,
            rate,
        )?);
    }
    let r = resampler.as_mut().expect("set above");
    let mut converted = Audio::empty();
    r.run(frame, &mut converted)?;
    extend(out, &converted);
    Ok(())
}

fn extend(out: &mut Vec<f32>, frame: &Audio) {
    let n = frame.samples();
    if n == 0 {
        return;
    }
    let bytes = &frame.data(0)[..n * 4];
    out.extend(bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
}

/// Drain the resampler's delay into `out`: one flush may not return everything.
pub(crate) fn flush_resampler(r: &mut resampling::Context, out: &mut Vec<f32>) {
    loop {
        // A roomy output frame, as the CLI's aresample flushes with 4096 samples: a frame
        // sized by swr_get_delay() leaves part of the filter tail behind.
        let mut tail = Audio::new(Sample::F32(SampleType::Packed), 4096, ChannelLayout::MONO);
        match r.flush(&mut tail) {
            Ok(_) if tail.samples() > 0 => extend(out, &tail),
            _ => break,
        }
    }
}
