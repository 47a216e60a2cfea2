//! Helpers shared by the integration tests: running the binary and writing tiny recipes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use vssl::io::read_safetensors;

/// The repository root (where `registry/` and `experiments/` live).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `vssl` with arguments, logs quiet, no inherited VSSL_ recipe variables.
pub fn vssl(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vssl"));
    c.args(args).current_dir(repo()).env("VSSL_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("VSSL_") && k != "VSSL_LOG" {
            c.env_remove(k);
        }
    }
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("failed to start vssl")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A tiny, fast rotation-prediction recipe (small network, tiny synthetic set)
/// written into `dir`; `extra` is an experiment layered over it (so it may repeat
/// sections).
pub fn tiny_recipe(dir: &Path, extra: &str) -> PathBuf {
    tiny_recipe_for(dir, "geometric", "stride_max = 2", extra)
}

/// As [`tiny_recipe`] for any method: `registry/methods/<method>.toml` as the method
/// base, with `method_keys` in its `[method]` table.
pub fn tiny_recipe_for(dir: &Path, method: &str, method_keys: &str, extra: &str) -> PathBuf {
    let repo = repo();
    let text = format!(
        r#"base = ["{r}/registry/methods/{method}.toml", "{r}/registry/backbones/r3d_small.toml",
        "{r}/registry/datasets/synthetic.toml", "{r}/registry/schedules/sgd_cosine.toml"]
[data]
frames = 4
size = 16
workers = 2
[data.synthetic]
train_videos = 16
test_videos = 8
video_frames = 16
size = 16
[backbone]
widths = [4, 8, 8, 8]
[method]
{method_keys}
[train]
batch_size = 2
steps = 6
checkpoint_every = 3
log_every = 1
warmup_steps = 2
[eval]
test_clips = 2
linear_epochs = 20
"#,
        r = repo.display()
    );
    std::fs::write(dir.join("tiny_base.toml"), text).unwrap();
    let path = dir.join("tiny.toml");
    std::fs::write(&path, format!("base = [\"tiny_base.toml\"]\n{extra}\n")).unwrap();
    path
}

/// Every tensor of a safetensors file, on the CPU.
pub fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    read_safetensors(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .0
}

/// `vssl SUB FILE --out OUT --device cpu EXTRA...`.
pub fn vssl_file_out(sub: &str, file: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        sub,
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    run(&mut vssl(&args))
}

/// `vssl train RECIPE --out OUT --device cpu EXTRA...`.
pub fn train(recipe: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    vssl_file_out("train", recipe, out, extra)
}

/// Same names, and every tensor equal bit for bit.
pub fn assert_bit_identical(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, ta) in a {
        let tb = &b[k];
        let (va, vb) = (
            ta.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            tb.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
        let same = va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "tensor {k} differs between straight and resumed runs");
    }
}

/// Trains `recipe` straight into `DIR/straight`, and into `DIR/resumed` stopped after
/// 3 steps (checking no final model is written) then `--resume`d; returns both run
/// directories. `what` labels failures.
pub fn straight_and_resumed(dir: &Path, recipe: &Path, what: &str) -> (PathBuf, PathBuf) {
    let straight = dir.join("straight");
    let o = train(recipe, &straight, &[]);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    let resumed = dir.join("resumed");
    let o = train(recipe, &resumed, &["--stop-after", "3"]);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    assert!(
        !resumed.join("model.safetensors").exists(),
        "{what}: a stopped run has no final model"
    );
    let o = train(recipe, &resumed, &["--resume"]);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    (straight, resumed)
}

/// Column `key` of a run's `metrics.jsonl`, one value per logged step.
pub fn metric_column(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: no {key} in {l}", run.display()))
        })
        .collect()
}

/// The SIGKILL tests need the binary's crash-injection hook (`VSSL_CRASH_AT_WRITE`),
/// which only builds with the `crash-hook` feature: fail loudly without it.
pub fn require_crash_hook() {
    if !cfg!(feature = "crash-hook") {
        panic!(
            "this test needs the crash-injection hook: run it with \
             `cargo test --release --features crash-hook` (tools/test.sh does)"
        );
    }
}

/// Writes `frames` frames of the lavfi source `src` (e.g. `testsrc=size=32x24:rate=25`)
/// to `path` with the ffmpeg CLI and the encoder arguments `args`.
pub fn ffmpeg_lavfi(path: &Path, src: &str, frames: usize, args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src])
        .args(["-frames:v", &frames.to_string()])
        .args(args)
        .arg(path)
        .output()
        .expect("the ffmpeg CLI must be installed (tools/setup.sh)");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The largest absolute element-wise difference of two tensors of one shape (as f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.to_dtype(candle_core::DType::F32)
        .unwrap()
        .sub(&b.to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
