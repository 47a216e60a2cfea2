//! Bad input for every subcommand: a clear error naming what is wrong, exit code 2,
//! never a panic; every shipped sweep file dry-runs; `--submit` hands the script to
//! `sbatch` (a fake one on PATH here).

use std::path::Path;

use crate::common::{repo, run, stderr, stdout, tiny_recipe, train, vssl};

/// Runs `vssl args` in `cwd` and checks exit 2 with `want` in stderr and no panic.
fn refused(cwd: &Path, args: &[&str], want: &str) {
    let o = run(vssl(args).current_dir(cwd));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    assert!(e.contains(want), "{args:?}: expected `{want}` in: {e}");
    assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
}

#[test]
fn every_subcommand_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("afile"), "x").unwrap();
    let quick = repo().join("experiments/quickstart.toml");
    let q = quick.to_str().unwrap();
    refused(
        d,
        &["data", "synth", "--out", "afile/sub"],
        "Not a directory",
    );
    refused(
        d,
        &["bench", "model", "--arch", "nope", "--reps", "1"],
        "unknown architecture",
    );
    refused(
        d,
        &["bench", "model", "--batch", "0", "--reps", "1"],
        "must be positive",
    );
    refused(
        d,
        &["bench", "conv3d", "--in", "0", "--reps", "1"],
        "--in must be at least 1",
    );
    refused(
        d,
        &[
            "bench", "conv3d", "--kernel", "9", "--frames", "2", "--size", "2", "--pad", "0",
            "--reps", "1",
        ],
        "does not fit",
    );
    refused(d, &["--device", "bogus", "train", q], "--device bogus");
    // A CUDA device this build or machine lacks: a clear refusal, exit 2, no panic.
    #[cfg(not(feature = "cuda"))]
    refused(d, &["--device", "cuda:0", "train", q], "--device cuda:0");
    // `auto` (the default) falls back to the CPU and says so.
    let auto = d.join("auto");
    let o = run(vssl(&[
        "train",
        tiny_recipe(d, "[train]\nsteps = 1\n").to_str().unwrap(),
        "--out",
        auto.to_str().unwrap(),
    ])
    .env("VSSL_LOG", "info"));
    assert!(o.status.success(), "{}", stderr(&o));
    #[cfg(not(feature = "cuda"))]
    assert!(
        stderr(&o).contains("--device auto: this build has no CUDA support; running on the CPU"),
        "{}",
        stderr(&o)
    );
    // The recipe's `train.device`: checked when the recipe loads, used under
    // `--device auto`, overridden by an explicit `--device cpu`.
    let bad = tiny_recipe(d, "[train]\nsteps = 1\ndevice = \"gpu\"\n");
    refused(d, &["train", bad.to_str().unwrap()], "train.device");
    let cuda = d.join("cuda");
    std::fs::create_dir_all(&cuda).unwrap();
    let cuda_recipe = tiny_recipe(&cuda, "[train]\nsteps = 1\ndevice = \"cuda:0\"\n");
    #[cfg(not(feature = "cuda"))]
    refused(
        d,
        &["train", cuda_recipe.to_str().unwrap(), "--out", "cuda-run"],
        "train.device cuda:0",
    );
    let o = run(&mut vssl(&[
        "--device",
        "cpu",
        "train",
        cuda_recipe.to_str().unwrap(),
        "--out",
        d.join("cpu-run").to_str().unwrap(),
    ]));
    assert!(
        o.status.success(),
        "--device cpu over train.device: {}",
        stderr(&o)
    );
    refused(d, &["train", "missing.toml"], "missing.toml");
    let sweep = repo().join("experiments/sweeps/tgn_groups.toml");
    refused(
        d,
        &["sweep", sweep.to_str().unwrap(), "--jobs", "0"],
        "--jobs must be at least 1",
    );

    // A run whose checkpoints and model are corrupt.
    let recipe = tiny_recipe(d, "");
    let out = d.join("run");
    assert!(train(&recipe, &out, &["--stop-after", "3"])
        .status
        .success());
    for (_, p) in vssl::run_dir::RunDir::new(&out).checkpoints() {
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..100]).unwrap();
    }
    let o = train(&recipe, &out, &["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("step-00000003.safetensors") && !stderr(&o).contains("panicked"));
    let done = d.join("done");
    assert!(train(&recipe, &done, &[]).status.success());
    let model = done.join("model.safetensors");
    let b = std::fs::read(&model).unwrap();
    std::fs::write(&model, &b[..200]).unwrap();
    refused(
        d,
        &[
            "eval",
            done.to_str().unwrap(),
            "--protocol",
            "knn",
            "--device",
            "cpu",
        ],
        "model.safetensors",
    );

    // compare with a malformed eval JSON names the file.
    let cmp = d.join("cmp");
    std::fs::create_dir_all(cmp.join("eval")).unwrap();
    std::fs::copy(
        done.join("recipe.resolved.toml"),
        cmp.join("recipe.resolved.toml"),
    )
    .unwrap();
    std::fs::write(cmp.join("eval/linear.json"), "{\"protocol\": ").unwrap();
    refused(
        d,
        &["compare", cmp.to_str().unwrap(), "--out", "cmpout"],
        "linear.json",
    );
}

#[test]
fn every_shipped_sweep_file_dry_runs() {
    let dir = repo().join("experiments/sweeps");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let o = run(&mut vssl(&[
            "sweep",
            p.to_str().unwrap(),
            "--dry-run",
            "--out",
            tmp.path().to_str().unwrap(),
        ]));
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        assert!(
            !stdout(&o).trim().is_empty(),
            "{}: no points listed",
            p.display()
        );
        n += 1;
    }
    assert!(n >= 3, "found {n} sweep files");
}

#[test]
fn submit_hands_the_script_to_sbatch() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.path().join("sbatch.args");
    let fake = bin.join("sbatch");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\necho 'Submitted batch job 4242'\n",
            log.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sweep = repo().join("experiments/sweeps/tgn_groups.toml");
    let out = dir.path().join("sw");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = run(vssl(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--executor",
        "slurm",
        "--submit",
        "--out",
        out.to_str().unwrap(),
    ])
    .env("PATH", path));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        format!("{}{}", stdout(&o), stderr(&o)).contains("4242"),
        "sbatch's answer is shown"
    );
    let args = std::fs::read_to_string(&log).unwrap();
    assert!(
        args.trim().ends_with("tgn_groups.sbatch"),
        "sbatch got {args}"
    );
    assert!(Path::new(args.split_whitespace().last().unwrap()).is_file());
}
