//! Write failures: a checkpoint that cannot be written (here: past a file-size limit,
//! `ulimit -f`, as a full disk or a quota would refuse it) stops the run with an error
//! naming the file, and leaves the previous checkpoint intact and resumable.

use std::process::Command;

use crate::common::{repo, stderr, tensors, tiny_recipe, train};

#[test]
fn a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "");
    let out = dir.path().join("run");
    let o = train(&recipe, &out, &["--stop-after", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = vssl::run_dir::RunDir::new(&out);
    let before = std::fs::read(run.checkpoint(3)).unwrap();
    assert!(
        before.len() > 16 * 1024,
        "the test needs a checkpoint above the limit"
    );
    // 16 KiB limit: small files (metrics lines, state, events) still fit.
    let script = format!(
        "ulimit -f 32; exec {} train {} --out {} --device cpu --resume",
        env!("CARGO_BIN_EXE_vssl"),
        recipe.display(),
        out.display()
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(repo())
        .env("VSSL_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the write should have failed: {}",
        stderr(&o)
    );
    assert!(
        o.status.code().is_some(),
        "exited with a code, not killed by a signal"
    );
    let e = stderr(&o);
    assert!(
        e.contains("step-00000006.safetensors") && e.contains("too large"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(run.checkpoint(3)).unwrap(),
        before,
        "the previous checkpoint is intact"
    );
    assert!(!run.checkpoint(6).exists());
    let leftovers: Vec<_> = std::fs::read_dir(run.checkpoints_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // Without the limit the run resumes from step 3 and finishes.
    let o = train(&recipe, &out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!tensors(&run.model()).is_empty());
}
