//! End-to-end runs of `vssl train` / `vssl eval` on tiny synthetic data: run
//! directory layout, exact resume, crash safety of checkpoint writes.

use candle_core::Device;
use vssl::io::read_safetensors;

use super::common::{
    assert_bit_identical, metric_column, require_crash_hook, run, stderr, stdout,
    straight_and_resumed, tensors, tiny_recipe, train, vssl,
};

#[test]
fn run_dir_layout_and_metadata() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let out = d.path().join("run");
    let o = train(&r, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("recipe.resolved.toml").is_file());
    assert!(out
        .join("checkpoints")
        .join("step-00000006.safetensors")
        .is_file());
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        6,
        "one metrics line per step with log_every = 1"
    );
    let (t, meta) = read_safetensors(&out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    let recipe = meta.get("recipe").expect("recipe in metadata");
    assert_eq!(
        recipe,
        &std::fs::read_to_string(out.join("recipe.resolved.toml")).unwrap()
    );
    assert!(t.contains_key("stem.0.weight") && t.contains_key("layer1.0.conv1.1.running_mean"));
    assert!(t.contains_key("pretext.fc.weight"));
    // A second train into the same directory without --resume refuses to clobber it.
    let again = train(&r, &out, &[]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
}

#[test]
fn resume_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let (straight, resumed) = straight_and_resumed(d.path(), &r, "geometric");
    assert_bit_identical(
        &tensors(&straight.join("model.safetensors")),
        &tensors(&resumed.join("model.safetensors")),
    );
    // The logged losses match too.
    assert_eq!(
        metric_column(&straight, "loss"),
        metric_column(&resumed, "loss")
    );
}

#[test]
fn resume_without_checkpoint_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let o = train(&r, &d.path().join("empty"), &["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn sigkill_during_checkpoint_write_keeps_previous_checkpoint() {
    require_crash_hook();
    // The process SIGKILLs itself halfway through its 3rd atomic write (the checkpoint
    // of step 3, after those of steps 1 and 2), as a crash at that moment would.
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(
        d.path(),
        "[train]\ncheckpoint_every = 1\nkeep_checkpoints = 5\n",
    );
    let out = d.path().join("run");
    let o = run(vssl(&[
        "train",
        r.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ])
    .env("VSSL_CRASH_AT_WRITE", "3"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(9),
        "expected death by SIGKILL: {:?} {}",
        o.status,
        stderr(&o)
    );
    let ckpts = out.join("checkpoints");
    let names: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.contains(".tmp")),
        "the torn write should be a temp file: {names:?}"
    );
    let list = vssl::run_dir::RunDir::new(&out).checkpoints();
    assert_eq!(
        list.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2],
        "{names:?}"
    );
    for (_, p) in &list {
        assert!(
            tensors(p).contains_key("model.stem.0.weight"),
            "{} incomplete",
            p.display()
        );
    }
    // Resuming continues from step 2 and gives the same model as an uninterrupted run.
    let o = train(&r, &out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".tmp")));
    let straight = d.path().join("straight");
    let o = train(&r, &straight, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_bit_identical(
        &tensors(&straight.join("model.safetensors")),
        &tensors(&out.join("model.safetensors")),
    );
}

#[test]
fn sigkill_at_many_moments_then_resume_equals_the_straight_run() {
    // The suite's small kill-anywhere soak (tools/soak.sh is the long one): SIGKILL
    // between steps, after a step's update but before its log line and checkpoint,
    // and halfway through checkpoint writes, at moments drawn from a fixed seed (the
    // crash-hook feature places each kill exactly, so the test is deterministic).
    // After each kill every file with a checkpoint name must load; resuming until
    // done must give the straight run's weights and metrics bit for bit.
    use rand::{Rng, SeedableRng};
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(
        d.path(),
        "[train]\nsteps = 24\ncheckpoint_every = 3\nkeep_checkpoints = 2\nlog_every = 1\n",
    );
    let straight = d.path().join("straight");
    let o = train(&r, &straight, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("run");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    let (mut kills, mut attempts) = (0, 0);
    loop {
        attempts += 1;
        assert!(attempts < 40, "no progress after {kills} kills");
        let done = vssl::run_dir::RunDir::new(&out)
            .checkpoints()
            .last()
            .map_or(0, |(s, _)| *s);
        // Kill within the next few steps, or inside one of the next writes.
        let (var, n) = if rng.random_bool(0.5) {
            ("VSSL_CRASH_AT_STEP", done + rng.random_range(1..=4))
        } else {
            ("VSSL_CRASH_AT_WRITE", rng.random_range(1..=2))
        };
        let mut args = vec![
            "train",
            r.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        if out.exists() {
            args.push("--resume");
        }
        let o = vssl(&args).env(var, n.to_string()).output().unwrap();
        if o.status.success() {
            break;
        }
        assert_eq!(o.status.code(), None, "not killed: {}", stderr(&o));
        kills += 1;
        for (_, p) in vssl::run_dir::RunDir::new(&out).checkpoints() {
            assert!(
                tensors(&p).contains_key("model.stem.0.weight"),
                "{} incomplete",
                p.display()
            );
        }
    }
    assert!(kills >= 5, "only {kills} kills");
    assert_bit_identical(
        &tensors(&straight.join("model.safetensors")),
        &tensors(&out.join("model.safetensors")),
    );
    let losses = |dir: &std::path::Path| -> Vec<(u64, u64)> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["step"].as_u64().unwrap(),
                    v["loss"].as_f64().unwrap().to_bits(),
                )
            })
            .collect()
    };
    let want = losses(&straight);
    assert_eq!(want.len(), 24);
    assert_eq!(losses(&out), want);
}

#[test]
fn eval_writes_json_and_prints_it_last() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let out = d.path().join("run");
    let o = train(&r, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (random, file) in [(false, "linear.json"), (true, "linear-random.json")] {
        let mut args = vec![
            "eval",
            out.to_str().unwrap(),
            "--protocol",
            "linear,knn",
            "--device",
            "cpu",
        ];
        if random {
            args.push("--random-init");
        }
        let o = run(&mut vssl(&args));
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        let last = text.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["protocol"], "knn");
        let r1 = v["metrics"]["recall@1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r1));
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("eval").join(file)).unwrap())
                .unwrap();
        assert_eq!(saved["random_init"], random);
        assert!(saved["metrics"]["top1"].as_f64().is_some());
    }
}

#[test]
fn eval_of_missing_run_is_bad_input() {
    let o = run(&mut vssl(&[
        "eval",
        "/nonexistent/run",
        "--protocol",
        "linear",
    ]));
    assert_eq!(o.status.code(), Some(2));
    let o = run(&mut vssl(&["eval", ".", "--protocol", "bogus"]));
    assert_eq!(o.status.code(), Some(2));
}

/// `train::fit` runs a method the caller built (no recipe on the way in): 2 steps
/// then `resume` to 4 equals 4 straight, and the CLI's run of the same recipe.
#[test]
fn fit_runs_a_caller_built_method_and_resumes_exactly() {
    use vssl::run_dir::RunDir;
    use vssl::train::{fit, FitOptions, LoaderConfig};
    let d = tempfile::tempdir().unwrap();
    let path = tiny_recipe(d.path(), "");
    let r = vssl::recipe::load(&vssl::recipe::RecipeSource::with_sets(
        path.clone(),
        vec!["train.steps=4".into()],
    ))
    .unwrap();
    let fit_into = |out: &std::path::Path, stop_after: Option<u64>, resume: bool| {
        let mut p = vssl::registry::pretext(
            &r.method,
            &r.backbone,
            r.data.frames,
            r.train.seed,
            &Device::Cpu,
        )
        .unwrap();
        let opts = FitOptions {
            parallel: None,
            loader: LoaderConfig::from(&r.data),
            resume,
            stop_after,
            recipe: None,
            name: "in-process".into(),
            force: false,
        };
        let ds = vssl::registry::dataset(&r.data).unwrap();
        fit(
            p.as_mut(),
            ds,
            &r.train,
            &opts,
            &RunDir::new(out),
            &Device::Cpu,
        )
        .unwrap()
    };
    let straight = d.path().join("straight");
    let s = fit_into(&straight, None, false);
    assert_eq!((s.steps_done, s.total_steps), (4, 4));
    let resumed = d.path().join("resumed");
    assert_eq!(fit_into(&resumed, Some(2), false).steps_done, 2);
    assert!(!RunDir::new(&resumed).model().exists());
    fit_into(&resumed, None, true);
    let (a, b) = (
        RunDir::new(&straight).model(),
        RunDir::new(&resumed).model(),
    );
    assert_bit_identical(&tensors(&a), &tensors(&b));
    // The recipe path (`vssl train`) is a thin wrapper over the same fit.
    let cli = d.path().join("cli");
    let o = train(&path, &cli, &["--set", "train.steps=4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_bit_identical(&tensors(&a), &tensors(&RunDir::new(&cli).model()));
}

/// `tools/gpu-check.sh --dry` (the GPU check on the CPU at tiny sizes) runs every
/// step end to end with this build's binary and reports each figure.
#[test]
fn gpu_check_script_runs_end_to_end_in_dry_mode() {
    let d = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("bash")
        .arg(super::common::repo().join("tools/gpu-check.sh"))
        .args([
            "--dry",
            "--python",
            "none",
            "--bin",
            env!("CARGO_BIN_EXE_vssl"),
        ])
        .env("OUT", d.path())
        .env("VSSL_LOG", "warn")
        .output()
        .unwrap();
    let report = std::fs::read_to_string(d.path().join("gpu-check.txt")).unwrap_or_default();
    assert!(o.status.success(), "{}\n{report}", stderr(&o));
    for want in [
        "-- machine: ok",
        "-- ops: ok",
        "ops parity:        all ops within tolerance",
        "-- conv3d: ok",
        "-- model: ok",
        "-- quickstart: ok",
        "max |difference| 0.00e+00 (tolerance 0.05)",
        "quickstart linear top-1: pretrained 0.",
        "gpu-check: all steps passed",
    ] {
        assert!(
            report.contains(want),
            "no `{want}` in the report:\n{report}"
        );
    }
}
