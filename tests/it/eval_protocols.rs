//! Downstream protocols end to end on tiny synthetic runs: video-level scoring,
//! determinism of the linear probe, fine-tuning resume, the random-init baseline,
//! and `--splits`.

use std::path::Path;

use candle_core::{Device, Tensor};
use vssl::eval::features::SplitFeatures;
use vssl::eval::metrics::{mean_std, top_k, video_probs};
use vssl::eval::{linear, EvalConfig, Features};

use super::common::{
    assert_bit_identical, require_crash_hook, run, stderr, stdout, tensors, tiny_recipe, train,
    vssl,
};

#[test]
fn video_level_scores_average_clip_softmax() {
    // Two videos, three clips, two classes. Video 0: clips vote 0, 0, 1 -> class 0.
    // Video 1: one confident clip for class 1 outweighs two mild ones for class 0.
    let logits = Tensor::new(
        &[
            [[2.0f32, 0.0], [1.0, 0.0], [0.0, 1.0]],
            [[0.1, 0.0], [0.1, 0.0], [0.0, 5.0]],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let p = video_probs(&logits).unwrap().to_vec2::<f32>().unwrap();
    let sm = |a: f64, b: f64| (a.exp() / (a.exp() + b.exp()), b.exp() / (a.exp() + b.exp()));
    let want0 = [sm(2.0, 0.0), sm(1.0, 0.0), sm(0.0, 1.0)];
    let want1 = [sm(0.1, 0.0), sm(0.1, 0.0), sm(0.0, 5.0)];
    for (row, want) in [(&p[0], want0), (&p[1], want1)] {
        let m0 = want.iter().map(|w| w.0).sum::<f64>() / 3.0;
        let m1 = want.iter().map(|w| w.1).sum::<f64>() / 3.0;
        assert!(
            (row[0] as f64 - m0).abs() < 1e-6 && (row[1] as f64 - m1).abs() < 1e-6,
            "{row:?}"
        );
    }
    let probs = video_probs(&logits).unwrap();
    assert_eq!(top_k(&probs, &[0, 1], 1).unwrap(), 1.0);
    // Clip level the same logits get 3 of 6 right for labels (0, 1).
    let flat = logits.reshape((6, 2)).unwrap();
    assert_eq!(top_k(&flat, &[0, 0, 0, 1, 1, 1], 1).unwrap(), 0.5);
}

#[test]
fn mean_std_hand_case() {
    let (m, s) = mean_std(&[0.5, 0.7, 0.6]);
    assert!((m - 0.6).abs() < 1e-12);
    assert!((s - (0.02f64 / 3.0).sqrt()).abs() < 1e-12);
}

fn trained_run(dir: &Path) -> std::path::PathBuf {
    let r = tiny_recipe(
        dir,
        "[eval]\nfinetune_epochs = 2\nfinetune_batch_size = 4\ntest_clips = 2\n",
    );
    let out = dir.join("run");
    let o = train(&r, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn linear_probe_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let out = trained_run(d.path());
    let a = run(&mut vssl(&[
        "eval",
        out.to_str().unwrap(),
        "--protocol",
        "linear",
        "--device",
        "cpu",
    ]));
    assert!(a.status.success(), "{}", stderr(&a));
    let first = std::fs::read_to_string(out.join("eval/linear.json")).unwrap();
    let b = run(&mut vssl(&[
        "eval",
        out.to_str().unwrap(),
        "--protocol",
        "linear",
        "--device",
        "cpu",
    ]));
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(
        first,
        std::fs::read_to_string(out.join("eval/linear.json")).unwrap()
    );
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    for k in ["top1", "top5", "clip_top1", "clip_top5"] {
        assert!(v["metrics"][k].as_f64().is_some(), "{k} missing: {first}");
    }
    assert_eq!(v["split"], 1);
    assert_eq!(v["skipped"], 0);
}

#[test]
fn random_init_is_the_pretraining_initialisation() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let recipe = vssl::recipe::load(&vssl::recipe::RecipeSource::file(&r)).unwrap();
    let (frames, seed) = (recipe.data.frames, recipe.train.seed);
    let a = vssl::registry::backbone(&recipe.backbone, frames, seed, &Device::Cpu).unwrap();
    let p = vssl::registry::pretext(&recipe.method, &recipe.backbone, frames, seed, &Device::Cpu)
        .unwrap();
    let (ta, tb) = (a.vars().all(), p.backbone().vars().all());
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        let (x, y) = (
            va.as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            vb.as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
        assert_eq!(x, y, "{ka}");
    }
    // A different seed gives a different initialisation.
    let mut other = recipe.clone();
    other.train.seed += 1;
    let c =
        vssl::registry::backbone(&other.backbone, frames, other.train.seed, &Device::Cpu).unwrap();
    let w = |b: &dyn vssl::backbone::Backbone| {
        b.vars().all()[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_ne!(w(a.as_ref()), w(c.as_ref()));
}

#[test]
fn finetune_resumes_bit_identically_after_a_crash() {
    require_crash_hook();
    let d = tempfile::tempdir().unwrap();
    let out = trained_run(d.path());
    let args = [
        "eval",
        out.to_str().unwrap(),
        "--protocol",
        "finetune",
        "--device",
        "cpu",
    ];
    // Straight run.
    let o = run(&mut vssl(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    let straight = tensors(&out.join("eval/finetune/last.safetensors"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/finetune.json")).unwrap())
            .unwrap();
    assert!(json["metrics"]["last"]["top1"].as_f64().is_some(), "{json}");
    assert!(out.join("eval/finetune/best.safetensors").is_file());
    std::fs::remove_dir_all(out.join("eval/finetune")).unwrap();
    // Killed in its 3rd atomic write (after epoch 1's best + checkpoint), then resumed.
    let o = run(vssl(&args).env("VSSL_CRASH_AT_WRITE", "3"));
    assert!(
        !o.status.success(),
        "the crash hook should have killed the run"
    );
    let mut resume_args = args.to_vec();
    resume_args.push("--resume");
    let o = run(&mut vssl(&resume_args));
    assert!(o.status.success(), "{}", stderr(&o));
    let resumed = tensors(&out.join("eval/finetune/last.safetensors"));
    assert_bit_identical(&straight, &resumed);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/finetune.json")).unwrap())
            .unwrap();
    assert_eq!(json["metrics"], again["metrics"]);
}

#[test]
fn splits_report_mean_and_std() {
    let d = tempfile::tempdir().unwrap();
    let out = trained_run(d.path());
    let o = run(&mut vssl(&[
        "eval",
        out.to_str().unwrap(),
        "--protocol",
        "knn",
        "--splits",
        "1,2,3",
        "--device",
        "cpu",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let mut r1 = Vec::new();
    for s in 1..=3 {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("eval/knn-split{s}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(v["split"], s);
        r1.push(v["metrics"]["recall@1"].as_f64().unwrap());
    }
    let (m, s) = mean_std(&r1);
    assert!((last["mean"]["recall@1"].as_f64().unwrap() - m).abs() < 1e-12);
    assert!((last["std"]["recall@1"].as_f64().unwrap() - s).abs() < 1e-12);
    let bad = run(&mut vssl(&[
        "eval",
        out.to_str().unwrap(),
        "--protocol",
        "knn",
        "--splits",
        "1,x",
    ]));
    assert_eq!(bad.status.code(), Some(2));
}

/// Gaussian clusters around the class axes, `[videos, clips, dim]` with labels `v % classes`:
/// separable at video level, overlapping enough at clip level that training order shows.
fn cluster_features(
    videos: usize,
    clips: usize,
    dim: usize,
    classes: usize,
    seed: u64,
) -> SplitFeatures {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<u32> = (0..videos).map(|v| (v % classes) as u32).collect();
    let mut data = Vec::with_capacity(videos * clips * dim);
    for &l in &labels {
        for _ in 0..clips * dim {
            data.push(vssl::seed::normal(&mut rng) as f32);
        }
        let base = data.len() - clips * dim;
        for c in 0..clips {
            data[base + c * dim + l as usize] += 1.5;
        }
    }
    SplitFeatures {
        clips: Tensor::from_vec(data, (videos, clips, dim), &Device::Cpu).unwrap(),
        labels,
    }
}

#[test]
fn mini_batch_linear_probe_trains_and_depends_on_the_batch_size() {
    let classes = 3;
    let f = Features {
        train: cluster_features(60, 4, 8, classes, 1),
        test: cluster_features(30, 4, 8, classes, 2),
        skipped: vec![],
    };
    let probe = |bs: usize| {
        let cfg = EvalConfig {
            linear_epochs: 20,
            linear_batch_size: bs,
            ..EvalConfig::default()
        };
        linear::probe(&f, classes, &cfg, 0).unwrap()
    };
    let full = probe(0);
    let (b16, b64) = (probe(16), probe(64));
    // Chance is 1/3; every variant must clearly beat it, at clip and video level.
    for (bs, r) in [(0, &full), (16, &b16), (64, &b64)] {
        assert!(r.top1 > 0.8 && r.clip_top1 > 0.6, "batch {bs}: {r:?}");
        assert!(r.train_clip_top1 > 0.6, "batch {bs}: {r:?}");
    }
    // Different batch sizes take different paths (and neither is the full batch).
    assert_ne!(b16, b64);
    assert_ne!(b16, full);
    // The per-epoch order is seeded: the same batch size repeats bit for bit.
    assert_eq!(probe(16), b16);
}
