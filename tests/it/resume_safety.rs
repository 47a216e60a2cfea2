//! Resume safety: `--resume` on a run killed before its first checkpoint starts
//! over (a requeue loop must work), on a missing directory it is an error; a recipe
//! that changes the run is refused unless `--force`, harmless changes are listed; a
//! corrupt newest checkpoint (one that still parses) is caught by its checksum and
//! the previous one used.

use std::path::Path;

use crate::common::{
    assert_bit_identical, run as run_cmd, stderr, tensors, tiny_recipe, train, vssl,
};

fn same_metrics(a: &Path, b: &Path) {
    let strip = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                // Timing fields differ between any two runs.
                for k in ["clips_per_s", "data_wait", "elapsed_s", "seconds"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            })
            .collect()
    };
    assert_eq!(strip(a), strip(b));
}

#[test]
fn resume_before_the_first_checkpoint_starts_over_and_a_missing_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "");
    let straight = dir.path().join("straight");
    let o = train(&recipe, &straight, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Killed at step 2, before the checkpoint at 3: recipe and metrics lines, no
    // checkpoint (as a SIGKILL leaves it).
    let killed = dir.path().join("killed");
    let o = train(&recipe, &killed, &["--stop-after", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (_, p) in vssl::run_dir::RunDir::new(&killed).checkpoints() {
        std::fs::remove_file(p).unwrap();
    }
    let o = train(&recipe, &killed, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("starting from step 0"),
        "{}",
        stderr(&o)
    );
    assert_bit_identical(
        &tensors(&straight.join("model.safetensors")),
        &tensors(&killed.join("model.safetensors")),
    );
    same_metrics(&straight, &killed);

    let o = train(&recipe, &dir.path().join("nowhere"), &["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // A finished run with no checkpoint left is not resumable either.
    let done = dir.path().join("done");
    let o = train(&recipe, &done, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (_, p) in vssl::run_dir::RunDir::new(&done).checkpoints() {
        std::fs::remove_file(p).unwrap();
    }
    let o = train(&recipe, &done, &["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("finished run"), "{}", stderr(&o));
}

#[test]
fn resume_refuses_a_recipe_that_changes_the_run_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "");
    let run = dir.path().join("run");
    let o = train(&recipe, &run, &["--stop-after", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recorded = std::fs::read_to_string(run.join("recipe.resolved.toml")).unwrap();
    let o = train(
        &recipe,
        &run,
        &["--resume", "--set", "train.lr=0.2", "--set", "train.seed=7"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("train.lr") && e.contains("train.seed") && e.contains("--force"),
        "{e}"
    );
    assert!(!run.join("model.safetensors").exists(), "nothing ran");
    let now = std::fs::read_to_string(run.join("recipe.resolved.toml")).unwrap();
    assert_eq!(now, recorded, "the recorded recipe is untouched");

    // Harmless changes go through and are listed.
    let o = run_cmd(
        vssl(&[
            "train",
            recipe.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--device",
            "cpu",
            "--resume",
            "--set",
            "train.log_every=2",
            "--set",
            "data.workers=1",
        ])
        .env("VSSL_LOG", "info"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("data.workers") && e.contains("train.log_every") && e.contains("harmless"),
        "{e}"
    );

    // --force continues with the change, saying so.
    let run2 = dir.path().join("run2");
    let o = train(&recipe, &run2, &["--stop-after", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(
        &recipe,
        &run2,
        &["--resume", "--force", "--set", "train.lr=0.2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--force") && stderr(&o).contains("train.lr"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_corrupt_newest_checkpoint_is_caught_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "[train]\nsteps = 9\nkeep_checkpoints = 3\n");
    let straight = dir.path().join("straight");
    let o = train(&recipe, &straight, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let o = train(&recipe, &run, &["--stop-after", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpts = vssl::run_dir::RunDir::new(&run).checkpoints();
    let steps: Vec<u64> = ckpts.iter().map(|c| c.0).collect();
    assert_eq!(steps, [3, 6]);
    // Flip one bit in the last tensor byte: the file still parses.
    let newest = &ckpts[1].1;
    let mut bytes = std::fs::read(newest).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x10;
    std::fs::write(newest, &bytes).unwrap();
    assert!(vssl::io::read_safetensors(newest, &candle_core::Device::Cpu).is_ok());
    let o = train(&recipe, &run, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("checksum") && e.contains("step-00000003") && e.contains("step-00000006"),
        "{e}"
    );
    assert_bit_identical(
        &tensors(&straight.join("model.safetensors")),
        &tensors(&run.join("model.safetensors")),
    );
}
