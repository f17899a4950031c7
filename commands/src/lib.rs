//! What the emollama commands do beyond one request, on the pipeline core
//! (`emollama-runtime`) that every command and the service share: `eval` (a dataset's
//! metrics, resumable, compared), `bench` (latency per stage and memory), `compile`
//! (TensorRT engines ahead of the service), `info` (a bundle's report), `doctor` (this
//! host against the bundle), `watch` (a live source window by window; the service's
//! `[[watch]]` sources run it too). No HTTP server and no CLI parser here.

pub mod bench;
pub mod compile;
pub mod doctor;
pub mod error;
pub mod eval;
pub mod info;
pub mod outputs;
pub mod watch;

pub use error::CommandError;
