//! Every fuzz target's committed corpus (`fuzz/corpus/<target>/`) and every
//! crash it ever found (`fuzz/crashes/<target>/`, kept as regression inputs)
//! replayed on stable, through the same function libFuzzer calls. A target
//! without a corpus fails: it would otherwise pass without running.

use std::path::{Path, PathBuf};

use iogate_fuzz_harness::{run, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target() {
    for target in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(target);
        assert!(!inputs(&corpus).is_empty(), "expected seed inputs in {}, found none", corpus.display());
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(text.contains(&format!("run(\"{target}\"")), "{} does not run target {target}", source.display());
    }
}

#[test]
fn every_corpus_and_crash_input_replays() {
    let mut replayed = 0;
    for target in TARGETS {
        for kind in ["corpus", "crashes"] {
            for file in inputs(&fuzz_dir().join(kind).join(target)) {
                let data = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| run(target, &data));
                assert!(outcome.is_ok(), "target {target} panicked on {}", file.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= TARGETS.len(), "replayed only {replayed} inputs");
}
