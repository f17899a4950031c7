//! Every committed seed (`fuzz/corpus/TARGET/`) and every input that once made a target
//! crash or hang (`fuzz/regressions/TARGET/`, named after what it found) through its
//! target, on every `cargo test`: no fuzzing engine needed.

use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn every_seed_and_regression_replays_without_a_crash_or_hang() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for (name, target) in emollama_fuzz::TARGETS {
        let seeds = root.join("corpus").join(name);
        let count = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
        assert!(count > 0, "target {name} has no committed seeds in {}", seeds.display());
        for folder in [seeds, root.join("regressions").join(name)] {
            let Ok(entries) = std::fs::read_dir(&folder) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let started = Instant::now();
                if std::panic::catch_unwind(|| target(&data)).is_err() {
                    panic!("{name}: {} crashed", path.display());
                }
                // libFuzzer's -timeout in scripts/fuzz is 10 s: a replay takes far less.
                let took = started.elapsed();
                assert!(took < Duration::from_secs(10), "{name}: {} took {took:?}", path.display());
                replayed += 1;
            }
        }
    }
    println!("{replayed} inputs replayed");
}
