use std::ops::ControlFlow;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::context::LlmContext;
use super::sampling::Sampler;
use super::text::TextStream;
use crate::{CancelToken, EngineError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation ends when the text contains one of these; the stop string itself is
    /// not part of the output (text that could begin one is held back while streaming).
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 500, stop_strings: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfSequence,
    StopString,
    MaxTokens,
    ContextFull,
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub tokens: Vec<i32>,
    pub text: String,
    pub stop: StopReason,
    /// From the call to the first sampled token.
    pub first_token_ms: f64,
    /// Total time of the loop (sampling and decoding).
    pub total_ms: f64,
}

impl Generation {
    /// Generated tokens per second over the decode part (after the first token).
    pub fn decode_per_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1) as f64;
        let ms = self.total_ms - self.first_token_ms;
        if n > 0.0 && ms > 0.0 {
            n * 1e3 / ms
        } else {
            0.0
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string:
/// that much must be held back, it may still turn into a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for stop in stops {
        for (i, _) in stop.char_indices().skip(1) {
            if text.ends_with(&stop[..i]) {
                hold = hold.max(i);
            }
        }
    }
    hold
}

impl LlmContext {
    /// Generate after a prefill: sample from the current logits, stream text pieces to
    /// `on_piece` as they complete, decode each token, until a stop condition. `on_piece`
    /// may return `Break` to stop (like a cancelled client); `cancel` is polled per token.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
        opts: &GenerateOptions,
        cancel: Option<&CancelToken>,
        mut on_piece: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let model = self.model().clone();
        let mut stream = TextStream::new();
        let mut text = String::new();
        let mut emitted = 0usize;
        let mut tokens = Vec::new();
        let mut first_token_ms = 0.0;
        let stop = loop {
            if cancel.is_some_and(CancelToken::is_cancelled) {
                break StopReason::Cancelled;
            }
            if tokens.len() >= opts.max_new_tokens {
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(self.logits()?);
            if tokens.is_empty() {
                first_token_ms = started.elapsed().as_secs_f64() * 1e3;
            }
            if model.is_eog(token) {
                break StopReason::EndOfSequence;
            }
            sampler.accept(token);
            tokens.push(token);
            text.push_str(&stream.push(&model.token_bytes(token, false)?));
            if let Some(at) = opts.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
                if at > emitted {
                    let _ = on_piece(&text[emitted..]);
                    emitted = at;
                }
                break StopReason::StopString;
            }
            let safe = text.len() - held_back(&text, &opts.stop_strings);
            if safe > emitted {
                let flow = on_piece(&text[emitted..safe]);
                emitted = safe;
                if flow.is_break() {
                    break StopReason::Cancelled;
                }
            }
            if self.n_past() >= self.n_ctx() as usize {
                break StopReason::ContextFull;
            }
            if tokens.len() < opts.max_new_tokens {
                self.decode_token(token)?;
            }
        };
        if stop != StopReason::StopString {
            text.push_str(&stream.finish());
            if text.len() > emitted {
                let _ = on_piece(&text[emitted..]);
            }
        }
        Ok(Generation { tokens, text, stop, first_token_ms, total_ms: started.elapsed().as_secs_f64() * 1e3 })
    }
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn partial_stop_strings_are_held_back() {
        let stops = vec!["###".to_string(), "Assistant:".to_string()];
        assert_eq!(held_back("hello #", &stops), 1);
        assert_eq!(held_back("hello ##", &stops), 2);
        assert_eq!(held_back("hello Assis", &stops), 5);
        assert_eq!(held_back("hello", &stops), 0);
    }
}
