//! Mixed precision (`train.precision = "bf16"`): bf16 activations and convolutions
//! over f32 master weights, with batch-norm statistics, heads and losses in f32. On
//! the CPU it runs the generic (GPU) kernels, which is what these tests check.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use super::common::{metric_column, stderr, tensors, tiny_recipe, train};

/// One training-mode forward and backward of the tiny recipe's backbone in f32, f16
/// and bf16 on the same input and weights: features leave in f32, weight gradients
/// are f32, and both stay close to the f32 ones, f16 (11 significant bits) about ten
/// times closer than bf16 (8): the differences are the half types' rounding, not
/// a path that computes something else.
#[test]
fn half_precision_steps_track_the_f32_step_by_their_precision() {
    let d = tempfile::tempdir().unwrap();
    let path = tiny_recipe(d.path(), "");
    let r = vssl::recipe::load(&vssl::recipe::RecipeSource::with_sets(path, vec![])).unwrap();
    // Seeded draws (candle's CPU generator cannot be seeded).
    let uniform = |n: usize, seed: u64| -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    };
    let x = Tensor::from_vec(
        uniform(4 * 3 * 4 * 16 * 16, 1),
        (4, 3, 4, 16, 16),
        &Device::Cpu,
    )
    .unwrap();
    let target = Tensor::from_vec(uniform(4 * 8, 2), (4, 8), &Device::Cpu).unwrap();
    let run = |dtype: DType| {
        let p = vssl::registry::pretext(&r.method, &r.backbone, 4, 3, &Device::Cpu).unwrap();
        let f = p
            .backbone()
            .pooled(&x.to_dtype(dtype).unwrap(), true)
            .unwrap();
        assert_eq!(f.dtype(), DType::F32, "features leave the backbone in f32");
        let g = (&f * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads: BTreeMap<String, Tensor> = p
            .backbone()
            .vars()
            .trainable()
            .into_iter()
            .map(|(k, v): (String, Var)| {
                let gv = g.get(v.as_tensor()).unwrap().clone();
                assert_eq!(gv.dtype(), DType::F32, "{k}: master gradient dtype");
                (k, gv)
            })
            .collect();
        (f, grads)
    };
    let scalar = |t: Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
    let norm = |t: &Tensor| scalar(t.sqr().unwrap()).sqrt();
    let rel = |a: &Tensor, b: &Tensor| norm(&(a - b).unwrap()) / norm(b);
    let cos = |a: &Tensor, b: &Tensor| scalar((a * b).unwrap()) / (norm(a) * norm(b));
    let (f, g) = run(DType::F32);
    let (hf, hg) = run(DType::F16);
    let (bf, bg) = run(DType::BF16);
    let (he, be) = (rel(&hf, &f), rel(&bf, &f));
    assert!(
        be < 0.1 && he < be / 2.0,
        "features: f16 error {he}, bf16 error {be}"
    );
    for (k, g) in &g {
        let (ch, cb) = (cos(g, &hg[k]), cos(g, &bg[k]));
        assert!(
            ch > 0.99 && cb > 0.8,
            "{k}: gradient cosine f16 {ch}, bf16 {cb}"
        );
    }
}

/// `vssl train` with `train.precision = "bf16"`: the run trains (its first loss
/// within 1% of the f32 run's, its losses falling like those), its weights and optimiser state stay f32,
/// and the key is in the resolved recipe; an unknown precision is refused naming it.
#[test]
fn bf16_training_keeps_f32_weights_and_tracks_the_f32_losses() {
    let d = tempfile::tempdir().unwrap();
    let f32_recipe = tiny_recipe(d.path(), "");
    let bf16_dir = d.path().join("bf");
    std::fs::create_dir_all(&bf16_dir).unwrap();
    let bf16_recipe = tiny_recipe(&bf16_dir, "[train]\nprecision = \"bf16\"\n");
    let (a, b) = (d.path().join("f32"), d.path().join("bf16"));
    for (r, out) in [(&f32_recipe, &a), (&bf16_recipe, &b)] {
        let o = train(r, out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (la, lb) = (metric_column(&a, "loss"), metric_column(&b, "loss"));
    // The first step sees the same weights and batch (the forward differs by
    // rounding); later steps follow their own weights, and both runs learn.
    assert!(
        (la[0] - lb[0]).abs() <= 0.01 * la[0],
        "step 1: f32 {la:?}, bf16 {lb:?}"
    );
    let tail = |l: &[f64]| l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(lb.iter().all(|l| l.is_finite()), "{lb:?}");
    assert!(tail(&la) < 0.85 * la[0], "f32 did not learn: {la:?}");
    assert!(tail(&lb) < 0.85 * lb[0], "bf16 did not learn: {lb:?}");
    for (k, t) in tensors(&b.join("checkpoints/step-00000006.safetensors")) {
        if k.starts_with("model.") && !k.ends_with("num_batches_tracked")
            || k.starts_with("optim.momentum")
        {
            assert_eq!(t.dtype(), DType::F32, "{k}");
        }
    }
    let resolved = std::fs::read_to_string(b.join("recipe.resolved.toml")).unwrap();
    assert!(resolved.contains("precision = \"bf16\""), "{resolved}");
    let bad_dir = d.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad = tiny_recipe(&bad_dir, "[train]\nprecision = \"fp8\"\n");
    let o = train(&bad, &d.path().join("bad-run"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("precision"), "{}", stderr(&o));
}
