//! Sweeps: grid/zip/runs/seeds expansion and names, early errors for bad sweep
//! files, the local runner (resume of an interrupted sweep, failures recorded while
//! others complete) and the Slurm job-array script.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::common::{self, assert_bit_identical, run, stderr, stdout, tensors, tiny_recipe, vssl};

/// A sweep file `sweep.toml` beside a tiny recipe `tiny.toml` in `dir`.
fn sweep_file(dir: &Path, body: &str) -> PathBuf {
    tiny_recipe(dir, "");
    let p = dir.join("sweep.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn sweep_cmd(file: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    common::vssl_file_out("sweep", file, out, extra)
}

/// `vssl sweep FILE --executor slurm`: the job-array script's path and text, which
/// must hold each of `lines` as a whole line.
fn slurm_script(file: &Path, out: &Path, lines: &[&str]) -> (PathBuf, String) {
    let o = sweep_cmd(file, out, &["--executor", "slurm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let path = PathBuf::from(stdout(&o).trim());
    let script = std::fs::read_to_string(&path).unwrap();
    for line in lines {
        assert!(
            script.lines().any(|l| l == *line),
            "missing `{line}`:\n{script}"
        );
    }
    (path, script)
}

fn value(p: &vssl::sweep::Point, key: &str) -> Option<String> {
    p.overrides
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.to_string())
}

#[test]
fn grid_zip_seeds_expand_in_order_with_names() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(
        d.path(),
        r#"base = "tiny.toml"
seeds = [3, 4]
[grid]
"train.lr" = [0.01, 0.02]
method.stride_max = [2, 3, 4]
[zip]
"train.steps" = [5, 7]
"train.warmup_steps" = [1, 2]
"#,
    );
    let out = d.path().join("out");
    let s = vssl::sweep::load(&f, &[], Some(&out)).unwrap();
    // 2 x 3 grid x 2 zip x 2 seeds.
    assert_eq!(s.points.len(), 24);
    assert_eq!(s.spec.name, "sweep");
    // Seeds outermost, grid keys alphabetical (method.stride_max, train.lr) with the
    // last fastest, zip innermost.
    let p = &s.points[0];
    assert_eq!(
        p.label,
        "stride_max=2,lr=0.01,steps=5,warmup_steps=1,seed=3"
    );
    assert_eq!(p.group, "stride_max=2,lr=0.01,steps=5,warmup_steps=1");
    assert_eq!(
        s.points[1].label,
        "stride_max=2,lr=0.01,steps=7,warmup_steps=2,seed=3"
    );
    assert_eq!(
        s.points[2].label,
        "stride_max=2,lr=0.02,steps=5,warmup_steps=1,seed=3"
    );
    assert_eq!(
        s.points[4].label,
        "stride_max=3,lr=0.01,steps=5,warmup_steps=1,seed=3"
    );
    assert_eq!(
        s.points[12].label,
        "stride_max=2,lr=0.01,steps=5,warmup_steps=1,seed=4"
    );
    // The overrides reach the resolved recipes.
    for p in &s.points {
        let r = &p.recipe;
        assert_eq!(value(p, "train.lr").unwrap(), r.train.lr.to_string());
        assert_eq!(value(p, "train.steps").unwrap(), r.train.steps.to_string());
        assert_eq!(
            value(p, "train.warmup_steps").unwrap(),
            r.train.warmup_steps.to_string()
        );
        assert_eq!(Some(r.train.seed), p.seed);
        // Zip keys move together.
        assert_eq!(r.train.warmup_steps, if r.train.steps == 5 { 1 } else { 2 });
        // Directory: label plus 8 hex digits of the recipe hash.
        let name = p.dir.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, format!("{}-{}", p.label, p.hash));
        assert_eq!(p.hash.len(), 8);
        assert!(p.hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(p.dir.starts_with(&out));
    }
    // Distinct recipes, distinct hashes; the same sweep twice gives the same names.
    let mut hashes: Vec<&str> = s.points.iter().map(|p| p.hash.as_str()).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 24);
    let again = vssl::sweep::load(&f, &[], Some(&out)).unwrap();
    assert_eq!(again.points[7].dir, s.points[7].dir);
}

#[test]
fn runs_have_their_own_base_and_overrides() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(
        d.path(),
        r#"base = "tiny.toml"
eval = ["knn"]
[grid]
"train.lr" = [0.01, 0.02]
"eval.lr" = [0.5]
[[runs]]
name = "adamw"
set = { "train.optimizer" = "adamw", "backbone.norm" = "tgn" }
[[runs]]
name = "random_init"
pretrain = false
"#,
    );
    let s = vssl::sweep::load(&f, &[], Some(&d.path().join("o"))).unwrap();
    let labels: Vec<&str> = s.points.iter().map(|p| p.label.as_str()).collect();
    // Keys sharing a last segment keep their full dotted names.
    assert_eq!(
        labels,
        [
            "eval.lr=0.5,train.lr=0.01",
            "eval.lr=0.5,train.lr=0.02",
            "adamw,norm=tgn,optimizer=adamw",
            "random_init"
        ]
    );
    assert_eq!(
        s.points[2].recipe.backbone.norm,
        vssl::recipe::NormKind::Tgn
    );
    assert!(!s.points[3].pretrain && s.points[2].pretrain);
    // Same recipe as the base, but no pretraining: a different run.
    assert_ne!(s.points[3].hash, s.points[2].hash);
}

/// `[set]` reaches every point (grid points and runs, the random-init arm too), stays
/// out of the run names, and a point's own override of the same key wins.
#[test]
fn common_set_applies_to_every_point_under_its_own_overrides() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(
        d.path(),
        r#"base = "tiny.toml"
eval = ["knn"]
[set]
"train.lr" = 0.03
[set.eval.data]
kind = "synthetic"
frames = 4
[set.eval.data.synthetic]
size = 40
shapes = ["ring", "cross"]
[[runs]]
name = "a"
[[runs]]
name = "b"
set = { "train.lr" = 0.07 }
[[runs]]
name = "random_init"
pretrain = false
"#,
    );
    let s = vssl::sweep::load(&f, &[], Some(&d.path().join("o"))).unwrap();
    let labels: Vec<&str> = s.points.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["a", "b,lr=0.07", "random_init"]);
    let lrs: Vec<f64> = s.points.iter().map(|p| p.recipe.train.lr).collect();
    assert_eq!(lrs, [0.03, 0.07, 0.03]);
    for p in &s.points {
        let e = p
            .recipe
            .eval
            .data
            .as_ref()
            .expect("[set.eval.data] reaches the point");
        assert_eq!((e.frames, e.synthetic.size), (4, 40), "{}", p.label);
        assert_eq!(
            e.synthetic.shapes,
            [
                vssl::data::synthetic::Shape::Ring,
                vssl::data::synthetic::Shape::Cross
            ]
        );
        // The pretraining data is untouched.
        assert_eq!(p.recipe.data.synthetic.size, 16);
    }
    // A key both common and varied is refused, naming it.
    rejects(
        "base = \"tiny.toml\"\n[set]\n\"train.lr\" = 0.1\n[grid]\n\"train.lr\" = [0.1, 0.2]\n",
        &["set.train.lr", "also varied"],
    );
}

/// Expects exit code 2, every `needles` in stderr, and no run directory created.
fn rejects(body: &str, needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), body);
    let out = d.path().join("out");
    let o = sweep_cmd(&f, &out, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{body}\n{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    assert!(
        !out.exists(),
        "nothing may start before every point resolves"
    );
}

#[test]
fn bad_sweep_files_fail_before_any_run() {
    // An unknown key path, in a later point only.
    rejects(
        "base = \"tiny.toml\"\n[[runs]]\nname = \"ok\"\n[[runs]]\nname = \"typo\"\nset = { \"train.learning_rate\" = 0.1 }\n",
        &["sweep.toml", "[[runs]] `typo`", "train.learning_rate", "unknown field"],
    );
    rejects(
        "base = \"tiny.toml\"\n[grid]\n\"optim.lr\" = [0.1, 0.2]\n",
        &["[grid]", "optim", "unknown top-level key"],
    );
    // A bad value in the last grid point.
    rejects(
        "base = \"tiny.toml\"\n[grid]\n\"train.lr\" = [0.1, -1.0]\n",
        &["[grid]", "point `lr=-1.0`", "train.lr", "must be > 0"],
    );
    rejects(
        "base = \"tiny.toml\"\n[grid]\n",
        &["key `grid`", "is empty"],
    );
    rejects(
        "base = \"tiny.toml\"\n[grid]\n\"train.lr\" = []\n",
        &["grid.train.lr", "has no values"],
    );
    rejects(
        "base = \"tiny.toml\"\n[grid]\n\"train.lr\" = 0.1\n",
        &["grid.train.lr", "must be a list"],
    );
    rejects(
        "base = \"tiny.toml\"\n[zip]\n\"train.lr\" = [0.1, 0.2, 0.3]\n\"train.steps\" = [3, 4]\n",
        &[
            "key `zip`",
            "same length",
            "train.lr` has 3",
            "train.steps` has 2",
        ],
    );
    rejects(
        "base = \"tiny.toml\"\ngrids = 1\n",
        &["unknown field `grids`"],
    );
    rejects(
        "base = \"missing.toml\"\n",
        &["key `base`", "missing.toml", "not found"],
    );
    rejects(
        "base = \"tiny.toml\"\neval = [\"lineer\"]\n",
        &["key `eval`", "lineer"],
    );
    rejects(
        "base = \"tiny.toml\"\n[zip]\n\"train.lr\" = [0.1, 0.1]\n",
        &["same run"],
    );
}

/// Modification times of every file under a directory.
fn mtimes(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), e.metadata().unwrap().modified().unwrap());
            }
        }
    }
    out
}

fn run_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("point.toml").is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn interrupted_sweep_finishes_without_redoing_finished_runs() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(
        d.path(),
        "base = \"tiny.toml\"\neval = [\"knn\"]\n[grid]\n\"train.lr\" = [0.01, 0.02]\n",
    );
    let out = d.path().join("out");
    let o = sweep_cmd(&f, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dirs = run_dirs(&out);
    assert_eq!(dirs.len(), 2);
    for r in &dirs {
        assert!(r.join("model.safetensors").is_file() && r.join("eval/knn.json").is_file());
        assert!(r.join("train.log").is_file() && r.join("recipe.resolved.toml").is_file());
    }
    let (a, b) = (&dirs[0], &dirs[1]);
    // Interrupt the second run as a kill at step 4 would have left it: the step-3
    // checkpoint, no final model, no evaluation.
    let straight = tensors(&b.join("model.safetensors"));
    std::fs::remove_file(b.join("model.safetensors")).unwrap();
    std::fs::remove_file(b.join("checkpoints/step-00000006.safetensors")).unwrap();
    std::fs::remove_dir_all(b.join("eval")).unwrap();
    let before = mtimes(a);

    let dry = sweep_cmd(&f, &out, &["--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("finished") && stdout(&dry).contains("partial (resumes)"));

    let o = sweep_cmd(&f, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stdout(&o);
    assert!(summary.contains("finished before"), "{summary}");
    assert_eq!(mtimes(a), before, "a finished run must not be touched");
    assert!(b.join("eval/knn.json").is_file());
    let log = std::fs::read_to_string(b.join("train.log")).unwrap();
    assert!(log.contains("--resume"), "{log}");
    // Resumed from its checkpoint, the run ends exactly where it would have.
    assert_bit_identical(&straight, &tensors(&b.join("model.safetensors")));
}

#[test]
fn a_failing_run_is_reported_and_the_others_complete() {
    let d = tempfile::tempdir().unwrap();
    // Valid recipe, but its videos do not exist: fails at run time, not at resolution.
    let f = sweep_file(
        d.path(),
        r#"base = "tiny.toml"
eval = ["knn"]
[[runs]]
name = "broken"
set = { "data.kind" = "folder", "data.root" = "/nonexistent/videos" }
[[runs]]
name = "fine"
[[runs]]
name = "scratch"
pretrain = false
"#,
    );
    let out = d.path().join("out");
    let o = sweep_cmd(&f, &out, &["--jobs", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of 3 runs failed"), "{}", stderr(&o));
    let summary = stdout(&o);
    assert!(summary.contains("FAILED (train)"), "{summary}");
    assert!(summary.contains("FAILED broken"), "{summary}");
    let dirs = run_dirs(&out);
    let find = |n: &str| {
        dirs.iter()
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(n))
            .unwrap()
            .clone()
    };
    assert!(!find("broken").join("model.safetensors").exists());
    assert!(find("fine").join("model.safetensors").is_file());
    assert!(find("fine").join("eval/knn.json").is_file());
    // The random-init point trains nothing and evaluates the untrained backbone.
    let scratch = find("scratch");
    assert!(!scratch.join("model.safetensors").exists());
    assert!(scratch.join("eval/knn-random.json").is_file());
}

#[test]
fn slurm_script_maps_array_indices_to_points() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(
        d.path(),
        r#"base = "tiny.toml"
eval = ["knn"]
[grid]
"train.lr" = [0.01, 0.02]
"method.stride_max" = [2, 3, 4]
[slurm]
partition = "gpu"
gpus = 1
cpus = 8
time = "01:00:00"
mem = "16G"
setup = ["module load cuda"]
"#,
    );
    let out = d.path().join("out");
    let (script_path, script) = slurm_script(
        &f,
        &out,
        &[
            "#SBATCH --array=0-5",
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus=1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --time=01:00:00",
            "#SBATCH --mem=16G",
            "module load cuda",
        ],
    );
    // Index i -> (stride_max, lr), keys alphabetical, the last fastest.
    let expected = [
        (2, 0.01),
        (2, 0.02),
        (3, 0.01),
        (3, 0.02),
        (4, 0.01),
        (4, 0.02),
    ];
    let mut seen = 0;
    for line in script.lines() {
        let t = line.trim_start();
        let Some((idx, rest)) = t.split_once(") run_point '") else {
            continue;
        };
        let i: usize = idx.parse().unwrap();
        let dir = PathBuf::from(rest.split('\'').next().unwrap());
        let r = vssl::recipe::load(&vssl::recipe::RecipeSource {
            file: dir.join("recipe.resolved.toml"),
            ..Default::default()
        })
        .unwrap();
        let vssl::recipe::MethodConfig::Geometric(g) = &r.method else {
            panic!("geometric")
        };
        assert_eq!((g.stride_max, r.train.lr), expected[i], "index {i}");
        let info: vssl::sweep::PointInfo =
            toml::from_str(&std::fs::read_to_string(dir.join("point.toml")).unwrap()).unwrap();
        assert_eq!(info.index, i);
        seen += 1;
    }
    assert_eq!(seen, 6);
    // The script is valid bash, and one array task runs its point end to end.
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script_path)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", stderr(&syntax));
    let script_no_setup = script.replace("module load cuda", "true");
    let runnable = d.path().join("task.sh");
    std::fs::write(&runnable, script_no_setup).unwrap();
    let task = std::process::Command::new("bash")
        .arg(&runnable)
        .env("SLURM_ARRAY_TASK_ID", "4")
        .env("VSSL", env!("CARGO_BIN_EXE_vssl"))
        .env("VSSL_LOG", "warn")
        .output()
        .unwrap();
    assert!(task.status.success(), "{}", stderr(&task));
    let done: Vec<PathBuf> = run_dirs(&out)
        .into_iter()
        .filter(|p| p.join("eval/knn.json").is_file())
        .collect();
    assert_eq!(done.len(), 1);
    assert!(done[0].to_str().unwrap().contains("stride_max=4,lr=0.01"));
    // --submit without sbatch on PATH is a clear error.
    let mut c = vssl(&[
        "sweep",
        f.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--executor",
        "slurm",
        "--submit",
    ]);
    c.env("PATH", "/nonexistent");
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sbatch"), "{}", stderr(&o));
}

/// `[slurm] gpus = 2` asks for two tasks per node and trains each point with one
/// rank per GPU through `srun ... --ranks slurm`; run here with a stand-in `srun`
/// that starts two tasks with Slurm's variables, the point trains data-parallel and
/// is evaluated once.
#[test]
fn slurm_script_with_several_gpus_trains_one_rank_per_gpu_through_srun() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(
        d.path(),
        r#"base = "tiny.toml"
eval = ["knn"]
[grid]
"train.lr" = [0.01]
[slurm]
gpus = 2
nodes = 1
"#,
    );
    let out = d.path().join("out");
    let (script_path, script) = slurm_script(
        &f,
        &out,
        &[
            "#SBATCH --nodes=1",
            "#SBATCH --ntasks-per-node=2",
            "#SBATCH --gpus-per-node=2",
        ],
    );
    assert!(!script.contains("#SBATCH --gpus=2"), "{script}");
    assert!(
        script
            .lines()
            .any(|l| l.trim_start().starts_with("srun \"$VSSL\"") && l.ends_with("--ranks slurm")),
        "{script}"
    );
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let srun = bin.join("srun");
    std::fs::write(
        &srun,
        "#!/bin/bash\npids=()\nfor i in 0 1; do\n  SLURM_PROCID=$i SLURM_NTASKS=2 SLURM_LOCALID=$i \
         SLURM_JOB_ID=7 SLURM_STEP_ID=0 \"$@\" & pids+=($!)\ndone\nrc=0\n\
         for p in \"${pids[@]}\"; do wait $p || rc=$?; done\nexit $rc\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&srun, std::fs::Permissions::from_mode(0o755)).unwrap();
    let task = std::process::Command::new("bash")
        .arg(&script_path)
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("VSSL", env!("CARGO_BIN_EXE_vssl"))
        .env("VSSL_LOG", "warn")
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    assert!(task.status.success(), "{}", stderr(&task));
    let dirs = run_dirs(&out);
    assert_eq!(dirs.len(), 1);
    let meta = vssl::io::read_safetensors(
        &dirs[0].join("checkpoints/step-00000006.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .1;
    assert_eq!(
        meta.get("ranks").map(String::as_str),
        Some("2"),
        "trained on two ranks"
    );
    assert!(dirs[0].join("model.safetensors").is_file());
    assert!(dirs[0].join("eval/knn.json").is_file());
}
