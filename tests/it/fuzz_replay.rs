//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) and every crash
//! the fuzzers found (`fuzz/regressions/<target>/`) through the same harnesses the
//! `cargo fuzz` targets call (`vssl::fuzzing`), on stable Rust: a parser that panics
//! on any of them fails this test, naming the file.

use std::path::{Path, PathBuf};

use super::common::repo;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn replay(name: &str, target: vssl::fuzzing::Harness, file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let caught = std::panic::catch_unwind(|| target(&bytes));
    assert!(
        caught.is_ok(),
        "fuzz target `{name}` panics on {}",
        file.display()
    );
}

#[test]
fn every_corpus_file_and_regression_replays_cleanly() {
    let fuzz = repo().join("fuzz");
    let mut total = 0;
    for (name, target) in vssl::fuzzing::TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no cargo-fuzz target for harness `{name}`"
        );
        let corpus = files(&fuzz.join("corpus").join(name));
        // Seeds that reach past the first check are what makes fuzzing find anything.
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{name} has {} files",
            corpus.len()
        );
        for f in corpus
            .iter()
            .chain(&files(&fuzz.join("regressions").join(name)))
        {
            replay(name, *target, f);
            total += 1;
        }
    }
    vssl::fuzzing::remove_scratch();
    assert!(total >= 3 * vssl::fuzzing::TARGETS.len());
}

#[test]
fn every_corpus_has_a_seed_its_parser_accepts() {
    // The fuzzers start from valid files, not only from the first error message.
    let corpus = repo().join("fuzz").join("corpus");
    for (name, target) in vssl::fuzzing::TARGETS {
        assert!(
            files(&corpus.join(name))
                .iter()
                .any(|f| target(&std::fs::read(f).unwrap())),
            "no seed in fuzz/corpus/{name} is accepted by its parser"
        );
    }
    vssl::fuzzing::remove_scratch();
}
