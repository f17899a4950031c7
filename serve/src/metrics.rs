//! Prometheus text exposition of the service's counters and histograms.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;

use emollama_runtime::{Stage, Timings};

const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: BTreeMap<&'static str, u64>,
    stages: BTreeMap<Stage, Histogram>,
    decode_tokens_per_second: f64,
    generated_tokens: u64,
    connections_refused: u64,
    /// The last failed requests, oldest first (the console's "recent errors").
    recent_errors: VecDeque<RecentError>,
}

/// Failed requests kept for `GET /v1/status`.
pub const RECENT_ERRORS: usize = 20;

/// One failed request as `GET /v1/status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentError {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub id: String,
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

/// The values read at render time.
pub struct Gauges {
    pub queue_depth: usize,
    pub in_flight: usize,
    pub connections: usize,
    pub ready: bool,
    pub draining: bool,
    pub model_bytes: u64,
    pub event_streams: usize,
}

/// Outcomes of `emollama_requests_total`, all rendered (zero included) so that a
/// dashboard's rate() never meets a missing series.
pub const OUTCOMES: [&str; 7] = ["ok", "client_error", "server_error", "busy", "draining", "cancelled", "timeout"];

impl Metrics {
    pub fn request(&mut self, outcome: &'static str) {
        *self.requests.entry(outcome).or_default() += 1;
    }

    pub fn error(&mut self, error: RecentError) {
        if self.recent_errors.len() == RECENT_ERRORS {
            self.recent_errors.pop_front();
        }
        self.recent_errors.push_back(error);
    }

    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent_errors.iter().cloned().collect()
    }

    pub fn stages(&mut self, timings_ms: &Timings, decode_per_s: f64, generated: usize) {
        for (stage, ms) in timings_ms {
            self.stages.entry(*stage).or_default().observe(ms / 1e3);
        }
        if generated > 1 {
            self.decode_tokens_per_second = decode_per_s;
        }
        self.generated_tokens += generated as u64;
    }

    /// Tokens of a request that did not finish (cancelled, timed out).
    pub fn tokens(&mut self, generated: usize) {
        self.generated_tokens += generated as u64;
    }

    pub fn connection_refused(&mut self) {
        self.connections_refused += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP emollama_requests_total Analyze requests by outcome.\n# TYPE emollama_requests_total counter"
        );
        for outcome in OUTCOMES {
            let _ = writeln!(
                s,
                "emollama_requests_total{{outcome=\"{outcome}\"}} {}",
                self.requests.get(outcome).unwrap_or(&0)
            );
        }
        let _ = writeln!(
            s,
            "# HELP emollama_stage_seconds Time per pipeline stage.\n# TYPE emollama_stage_seconds histogram"
        );
        for (stage, h) in &self.stages {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(s, "emollama_stage_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(s, "emollama_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "emollama_stage_seconds_sum{{stage=\"{stage}\"}} {}", h.sum);
            let _ = writeln!(s, "emollama_stage_seconds_count{{stage=\"{stage}\"}} {}", h.count);
        }
        let gauges = [
            ("emollama_queue_depth", "Requests admitted, not yet running (body or slot wait).", g.queue_depth as f64),
            ("emollama_in_flight", "Requests running.", g.in_flight as f64),
            ("emollama_connections", "Open connections.", g.connections as f64),
            ("emollama_ready", "1 once the engines are loaded and warmed up.", f64::from(u8::from(g.ready))),
            ("emollama_draining", "1 while shutting down.", f64::from(u8::from(g.draining))),
            (
                "emollama_decode_tokens_per_second",
                "Decode speed of the last request that generated.",
                self.decode_tokens_per_second,
            ),
            ("emollama_model_bytes", "Bytes of the bundle's files.", g.model_bytes as f64),
            ("emollama_event_streams", "Event streams (/v1/watch/events) open.", g.event_streams as f64),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            ("emollama_generated_tokens_total", "Tokens generated.", self.generated_tokens),
            ("emollama_connections_refused_total", "Connections refused at max_connections.", self.connections_refused),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        s
    }
}
