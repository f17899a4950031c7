//! What `scripts/package` builds for the board it runs on, as shell assignments: the
//! L4T and JetPack releases, the profile and its CUDA architecture, read by the same
//! detection the runtime uses (from the board's files under `--root`, `/` on a device;
//! a recorded tree in the tests), so the script holds no second copy of those tables.
//!
//! `cargo run -q -p emollama-devices --example jetson_build -- [--root DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

use emollama_devices::{detect, find_profile, load_profiles, profile_dirs};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = match args.as_slice() {
        [] => PathBuf::from("/"),
        [flag, dir] if flag == "--root" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: jetson_build [--root DIR]");
            return ExitCode::from(2);
        }
    };
    let profiles = match load_profiles(&profile_dirs()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = detect(&root, &profiles);
    let Some(l4t) = &host.l4t else {
        println!("JETSON=0");
        return ExitCode::SUCCESS;
    };
    let profile = host.profile.as_deref().and_then(|name| find_profile(&profiles, name).ok());
    let jetpack = host.jetpack.clone().unwrap_or_default();
    println!("JETSON=1");
    println!("L4T={l4t}");
    println!("JETPACK={jetpack}");
    println!("JETPACK_MAJOR={}", jetpack.split('.').next().unwrap_or_default());
    println!("PROFILE={}", host.profile.clone().unwrap_or_default());
    println!("CUDA_ARCH={}", profile.map(|p| p.gpu_arch.trim_start_matches("sm_").to_string()).unwrap_or_default());
    println!("CUDA={}", host.cuda.clone().unwrap_or_default());
    println!("TENSORRT={}", host.tensorrt.clone().unwrap_or_default());
    ExitCode::SUCCESS
}
