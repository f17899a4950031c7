//! Audio: the first audio stream resampled to 16 kHz mono f32, as
//! `ffmpeg -i in -ac 1 -ar 16000 -f f32le` (MERTools' extraction, spec §1.2).

use emollama_engines::CancelToken;
use ff::format::sample::{Sample, Type as SampleType};
use ff::media::Type;
use ff::software::resampling;
use ff::util::channel_layout::ChannelLayout;
use ff::util::frame::audio::Audio;
use ffmpeg_next as ff;

use super::error::MediaError;
use super::input::{open_input, MediaLimits};
use super::video::check;

/// All samples of the first audio stream at `rate` Hz, mono, f32 in [-1, 1].
/// A file without audio is `MediaError::NoAudio` (the pipeline decides what then).
pub fn decode_audio_16k_mono(
    source: &str,
    limits: &MediaLimits,
    rate: u32,
    cancel: &CancelToken,
) -> Result<Vec<f32>, MediaError> {
    let name = source.to_string();
    let (mut input, _) = open_input(source, limits, cancel)?;
    let stream = input.streams().best(Type::Audio).ok_or_else(|| MediaError::NoAudio { source_name: name.clone() })?;
    let index = stream.index();
    let err = |e: ff::Error| MediaError::Decode { source_name: name.clone(), reason: e.to_string() };
    let ctx = ff::codec::Context::from_parameters(stream.parameters()).map_err(err)?;
    let mut decoder = ctx.decoder().audio().map_err(err)?;
    let mut resampler: Option<resampling::Context> = None;
    let mut out = Vec::new();
    let mut frame = Audio::empty();
    let mut packet = ff::Packet::empty();
    let max_samples = (limits.max_duration_s * f64::from(rate)) as usize + rate as usize;

    let push = |frame: &mut Audio, resampler: &mut Option<resampling::Context>, out: &mut Vec<f32>| {
        resample_into(frame, resampler, rate, out).map_err(err)
    };

    loop {
        check(source, cancel)?;
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) => continue,
            Err(_) => break,
        }
        if packet.stream() != index || decoder.send_packet(&packet).is_err() {
            continue;
        }
        while decoder.receive_frame(&mut frame).is_ok() {
            push(&mut frame, &mut resampler, &mut out)?;
        }
        if out.len() > max_samples {
            return Err(MediaError::TooLong {
                source_name: name,
                seconds: out.len() as f64 / f64::from(rate),
                limit: limits.max_duration_s,
            });
        }
    }
    check(source, cancel)?; // an interrupted read ends the loop like a truncated tail
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut frame).is_ok() {
        push(&mut frame, &mut resampler, &mut out)?;
    }
    // Drain the resampler's delay: one flush may not return everything.
    if let Some(r) = resampler.as_mut() {
        loop {
            // A roomy output frame, as the CLI's aresample flushes with 4096 samples: a
            // frame sized by swr_get_delay() leaves part of the filter tail behind.
            let mut tail = Audio::new(Sample::F32(SampleType::Packed), 4096, ChannelLayout::MONO);
            match r.flush(&mut tail) {
                Ok(_) if tail.samples() > 0 => extend(&mut out, &tail),
                _ => break,
            }
        }
    }
    if out.is_empty() {
        return Err(MediaError::NoSamples { source_name: name });
    }
    Ok(out)
}

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
