//! Recipe layering and error reporting, through the `vssl` binary (exit codes and
//! messages are part of the interface).

use super::common::{run, stderr, stdout, vssl};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// An experiment over the shipped bases with `extra` appended.
fn experiment(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let r = super::common::repo();
    let text = format!(
        "base = [\"{r}/registry/methods/geometric.toml\", \"{r}/registry/backbones/r3d_small.toml\", \
         \"{r}/registry/datasets/synthetic.toml\", \"{r}/registry/schedules/sgd_cosine.toml\"]\n{extra}\n",
        r = r.display()
    );
    write(dir, "exp.toml", &text)
}

/// Runs `vssl recipe` and asserts exit code 2, no panic, and that stderr names `what` and `key`.
fn assert_bad(file: &std::path::Path, sets: &[&str], what: &str, key: &str) {
    let mut args = vec!["recipe", file.to_str().unwrap()];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    let out = run(&mut vssl(&args));
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {key}: stderr {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(what), "stderr should name `{what}`: {err}");
    assert!(err.contains(key), "stderr should name key `{key}`: {err}");
}

#[test]
fn unknown_key_names_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[train]\nlearning_rate = 0.1\n");
    assert_bad(&f, &[], "exp.toml", "train.learning_rate");
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[trian]\nlr = 0.1\n");
    assert_bad(&f, &[], "exp.toml", "trian");
}

#[test]
fn wrong_type_names_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[train]\nbatch_size = \"sixteen\"\n");
    assert_bad(&f, &[], "exp.toml", "train.batch_size");
}

#[test]
fn out_of_range_values_name_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[train]\nbatch_size = 0\n");
    assert_bad(&f, &[], "exp.toml", "train.batch_size");
    let f = experiment(d.path(), "[train]\nlr = -0.1\n");
    assert_bad(&f, &[], "exp.toml", "train.lr");
    // A value from --set is blamed on the --set layer.
    let f = experiment(d.path(), "");
    assert_bad(&f, &["train.lr=-1"], "--set train.lr=-1", "train.lr");
}

#[test]
fn missing_base_file_names_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "exp.toml",
        "base = [\"registry/methods/nope.toml\"]\n",
    );
    assert_bad(&f, &[], "exp.toml", "base");
    assert_bad(&f, &[], "nope.toml", "base");
}

#[test]
fn missing_recipe_file_is_bad_input() {
    let out = run(&mut vssl(&["recipe", "experiments/does_not_exist.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does_not_exist.toml"));
}

#[test]
fn unknown_method_names_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[method]\nkind = \"jigsaw\"\n");
    assert_bad(&f, &[], "exp.toml", "method.kind");
}

#[test]
fn syntax_error_names_file() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[train\nlr = 1\n");
    let out = run(&mut vssl(&["recipe", f.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exp.toml"), "{}", stderr(&out));
}

fn lr_of(toml_text: &str) -> f64 {
    let v: toml::Table = toml::from_str(toml_text).unwrap();
    v["train"]["lr"].as_float().unwrap()
}

#[test]
fn set_wins_over_env_and_env_over_file() {
    let file = "experiments/quickstart.toml";
    let plain = run(&mut vssl(&["recipe", file]));
    assert!(plain.status.success(), "{}", stderr(&plain));
    let file_lr = lr_of(&stdout(&plain));
    assert_eq!(file_lr, 0.001);

    let set = run(&mut vssl(&["recipe", file, "--set", "train.lr=0.5"]));
    assert_eq!(lr_of(&stdout(&set)), 0.5);

    let env = run(vssl(&["recipe", file]).env("VSSL_TRAIN__LR", "0.3"));
    assert!(env.status.success(), "{}", stderr(&env));
    assert_eq!(lr_of(&stdout(&env)), 0.3);

    let both = run(vssl(&["recipe", file, "--set", "train.lr=0.5"]).env("VSSL_TRAIN__LR", "0.3"));
    assert_eq!(lr_of(&stdout(&both)), 0.5);
}

#[test]
fn experiment_overrides_bases_in_order() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "[train]\nlr = 0.1\nbatch_size = 3\n");
    write(
        d.path(),
        "b.toml",
        "base = [\"a.toml\"]\n[train]\nlr = 0.2\n",
    );
    let r = super::common::repo();
    let f = write(
        d.path(),
        "exp.toml",
        &format!(
            "base = [\"{}/registry/methods/geometric.toml\", \"b.toml\"]\n[train]\nsteps = 7\n",
            r.display()
        ),
    );
    let out = run(&mut vssl(&["recipe", f.to_str().unwrap()]));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: toml::Table = toml::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["train"]["lr"].as_float(), Some(0.2));
    assert_eq!(v["train"]["batch_size"].as_integer(), Some(3));
    assert_eq!(v["train"]["steps"].as_integer(), Some(7));
    assert_eq!(v["method"]["kind"].as_str(), Some("geometric"));
}

#[test]
fn shipped_experiments_resolve() {
    for f in [
        "experiments/quickstart.toml",
        "experiments/geometric_r3d18_16x112_ucf101.toml",
        "experiments/speed_sort_r3d18_16x112_ucf101.toml",
        "experiments/speed_sort_quick.toml",
        "experiments/tclr_r3d18_16x4_ucf101.toml",
        "experiments/temporal_contrast_quick.toml",
        "experiments/vtdl_r3d18_16x4_ucf101.toml",
        "experiments/temporal_discriminative_quick.toml",
    ] {
        let out = run(&mut vssl(&["recipe", f]));
        assert!(out.status.success(), "{f}: {}", stderr(&out));
        // The resolved recipe is itself a valid recipe.
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "resolved.toml", &stdout(&out));
        let again = run(&mut vssl(&["recipe", p.to_str().unwrap()]));
        assert!(again.status.success(), "{f} re-read: {}", stderr(&again));
        assert_eq!(stdout(&again), stdout(&out));
    }
}

#[test]
fn bad_linear_batch_size_names_the_key() {
    let d = tempfile::tempdir().unwrap();
    let f = experiment(d.path(), "[eval]\nlinear_batch_size = 1\n");
    assert_bad(&f, &[], "exp.toml", "eval.linear_batch_size");
    let f = experiment(d.path(), "");
    assert_bad(
        &f,
        &["eval.linear_batch_size=-4"],
        "--set eval.linear_batch_size=-4",
        "eval.linear_batch_size",
    );
    // 0 (the default) is not written; a mini-batch size is.
    let out = run(&mut vssl(&["recipe", f.to_str().unwrap()]));
    assert!(
        !stdout(&out).contains("linear_batch_size"),
        "{}",
        stdout(&out)
    );
    let out = run(&mut vssl(&[
        "recipe",
        f.to_str().unwrap(),
        "--set",
        "eval.linear_batch_size=32",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("linear_batch_size = 32"),
        "{}",
        stdout(&out)
    );
}
