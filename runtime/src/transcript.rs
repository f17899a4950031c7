//! Where the "The person in video says: …" sentence comes from: given text, a text
//! file, or subtitles (`.srt`/`.vtt`) next to the video.

use std::path::{Path, PathBuf};

/// The subtitle file beside a local video (`clip.mp4` → `clip.srt` or `clip.vtt`).
pub fn sidecar_subtitles(media: &str) -> Option<PathBuf> {
    if media.contains("://") {
        return None;
    }
    let p = Path::new(media);
    ["srt", "vtt"].iter().map(|ext| p.with_extension(ext)).find(|c| c.is_file())
}

/// The spoken text of an SRT or WebVTT file: cue numbers, timings, headers, notes and
/// markup removed, cues joined with spaces.
pub fn subtitles_text(content: &str) -> String {
    let mut words = Vec::new();
    let mut in_note = false;
    for line in content.lines() {
        let l = line.trim().trim_start_matches('\u{feff}');
        if l.is_empty() {
            in_note = false;
            continue;
        }
        if in_note || l == "WEBVTT" || l.starts_with("WEBVTT ") || l.starts_with("NOTE") || l.starts_with("STYLE") {
            in_note = !l.starts_with("WEBVTT");
            continue;
        }
        if l.contains("-->") || l.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let mut text = String::new();
        let mut in_tag = false;
        for c in l.chars() {
            match c {
                '<' | '{' => in_tag = true,
                '>' | '}' => in_tag = false,
                _ if !in_tag => text.push(c),
                _ => {}
            }
        }
        let text = text.trim();
        if !text.is_empty() {
            words.push(text.to_string());
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srt_and_vtt_are_reduced_to_their_words() {
        let srt = "1\n00:00:00,000 --> 00:00:01,500\nI can't believe it.\n\n2\n00:00:01,500 --> 00:00:03,000\n<i>We made it!</i>\n";
        assert_eq!(subtitles_text(srt), "I can't believe it. We made it!");
        let vtt =
            "WEBVTT\n\nNOTE a comment\nspanning lines\n\n00:00.000 --> 00:01.000 align:start\n<v Ann>Hello there.\n";
        assert_eq!(subtitles_text(vtt), "Hello there.");
    }
}
