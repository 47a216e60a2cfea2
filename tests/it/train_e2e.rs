//! End-to-end runs of `vssl train` / `vssl eval` on tiny synthetic data: run
//! directory layout, exact resume, crash safety of checkpoint writes.

use std::time::Duration;

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
fn sigkill_at_random_moments_never_leaves_a_torn_checkpoint() {
    // External kills at varying moments of a checkpoint-heavy run: whatever carries a
    // checkpoint name must load.
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(
        d.path(),
        "[backbone]\nwidths = [32, 64, 128, 256]\n[train]\nsteps = 400\ncheckpoint_every = 1\n",
    );
    let out = d.path().join("run");
    for attempt in 0..4u64 {
        let mut args = vec![
            "train",
            r.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        if attempt > 0 {
            args.push("--resume");
        }
        let mut child = vssl(&args).spawn().unwrap();
        let start = std::time::Instant::now();
        while vssl::run_dir::RunDir::new(&out).checkpoints().is_empty()
            && start.elapsed() < Duration::from_secs(60)
        {
            assert!(child.try_wait().unwrap().is_none(), "training exited early");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100 + 137 * attempt));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let list = vssl::run_dir::RunDir::new(&out).checkpoints();
        assert!(!list.is_empty());
        for (_, p) in &list {
            assert!(
                tensors(p).contains_key("model.stem.0.weight"),
                "{} incomplete",
                p.display()
            );
        }
    }
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
