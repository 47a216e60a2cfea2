//! Optimizer, learning-rate schedule and checkpoint-file building blocks of the
//! trainer, checked against hand-computed / independent f64 PyTorch-formula values.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use vssl::io::{read_safetensors, write_safetensors_atomic};
use vssl::run_dir::RunDir;
use vssl::train::optim::{clip_grad_norm, Optimizer, OptimizerConfig, OptimizerKind};
use vssl::train::schedule::{PlateauConfig, PlateauState, Schedule, ScheduleKind};

type R<T = ()> = vssl::Result<T>;

fn sgd(momentum: f64, nesterov: bool, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Sgd,
        momentum,
        nesterov,
        weight_decay,
        betas: [0.9, 0.999],
        eps: 1e-8,
    }
}

fn adamw(weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Adamw,
        momentum: 0.0,
        nesterov: false,
        weight_decay,
        betas: [0.9, 0.999],
        eps: 1e-8,
    }
}

/// Curvatures of the quadratic loss `0.5 * sum(a_i * p_i^2)`; its gradient is `a * p`.
const A: [f64; 3] = [1.0, 0.5, 2.0];
const P0: [f64; 3] = [1.0, -2.0, 0.25];

fn quad_grads(p: &Var) -> R<candle_core::backprop::GradStore> {
    let a = Tensor::new(&A, p.device())?.to_dtype(p.dtype())?;
    let loss = ((p.as_tensor().sqr()? * a)?.sum_all()? * 0.5)?;
    Ok(loss.backward()?)
}

fn values(v: &Var) -> R<Vec<f64>> {
    Ok(v.as_tensor()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Independent scalar f64 implementation of torch.optim.SGD (dampening 0) on the quadratic.
fn reference_sgd(cfg: &OptimizerConfig, lr: f64, steps: usize) -> Vec<Vec<f64>> {
    let mut p = P0.to_vec();
    let mut buf: Option<Vec<f64>> = None;
    let mut out = Vec::new();
    for _ in 0..steps {
        let mut g: Vec<f64> = (0..3)
            .map(|i| A[i] * p[i] + cfg.weight_decay * p[i])
            .collect();
        if cfg.momentum != 0.0 {
            let b: Vec<f64> = match &buf {
                None => g.clone(),
                Some(b) => (0..3).map(|i| cfg.momentum * b[i] + g[i]).collect(),
            };
            g = if cfg.nesterov {
                (0..3).map(|i| g[i] + cfg.momentum * b[i]).collect()
            } else {
                b.clone()
            };
            buf = Some(b);
        }
        for i in 0..3 {
            p[i] -= lr * g[i];
        }
        out.push(p.clone());
    }
    out
}

/// Independent scalar f64 implementation of torch.optim.AdamW on the quadratic.
fn reference_adamw(cfg: &OptimizerConfig, lrs: &[f64]) -> Vec<Vec<f64>> {
    let [b1, b2] = cfg.betas;
    let mut p = P0.to_vec();
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    let mut out = Vec::new();
    for (t, &lr) in lrs.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..3 {
            let g = A[i] * p[i];
            p[i] *= 1.0 - lr * cfg.weight_decay;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let mhat = m[i] / (1.0 - b1.powi(t));
            let vhat = v[i] / (1.0 - b2.powi(t));
            p[i] -= lr * mhat / (vhat.sqrt() + cfg.eps);
        }
        out.push(p.clone());
    }
    out
}

/// Runs our optimizer on the quadratic in f64 and returns the params after each step.
fn run_ours(cfg: &OptimizerConfig, lrs: &[f64]) -> R<Vec<Vec<f64>>> {
    let p = Var::from_slice(&P0, 3, &Device::Cpu)?;
    let mut opt = Optimizer::new(cfg.clone(), vec![("w".to_string(), p.clone())])?;
    let mut out = Vec::new();
    for &lr in lrs {
        let grads = quad_grads(&p)?;
        opt.step(&grads, lr)?;
        out.push(values(&p)?);
    }
    assert_eq!(opt.steps_taken(), lrs.len() as u64);
    Ok(out)
}

#[test]
fn sgd_plain_matches_hand_computed_values() -> R {
    let got = run_ours(&sgd(0.0, false, 0.0), &[0.1, 0.1])?;
    // g0 = a*p0 = [1, -1, 0.5]; p1 = p0 - 0.1 g0; g1 = a*p1 = [0.9, -0.95, 0.4]; p2 = p1 - 0.1 g1.
    assert_close(&got[0], &[0.9, -1.9, 0.2], 1e-12, "step 1");
    assert_close(&got[1], &[0.81, -1.805, 0.16], 1e-12, "step 2");
    Ok(())
}

#[test]
fn sgd_momentum_matches_hand_computed_values() -> R {
    let cfg = sgd(0.9, false, 0.0);
    let got = run_ours(&cfg, &[0.1, 0.1, 0.1])?;
    // buf1 = g0 = [1,-1,0.5]            -> p1 = [0.9, -1.9, 0.2]
    // g1 = [0.9,-0.95,0.4]; buf2 = 0.9 buf1 + g1 = [1.8,-1.85,0.85] -> p2 = [0.72, -1.715, 0.115]
    // g2 = [0.72,-0.8575,0.23]; buf3 = [2.34,-2.5225,0.995]         -> p3 = [0.486, -1.46275, 0.0155]
    assert_close(&got[0], &[0.9, -1.9, 0.2], 1e-12, "step 1");
    assert_close(&got[1], &[0.72, -1.715, 0.115], 1e-12, "step 2");
    assert_close(&got[2], &[0.486, -1.46275, 0.0155], 1e-12, "step 3");
    let want = reference_sgd(&cfg, 0.1, 3);
    assert_close(&got[2], &want[2], 1e-12, "reference step 3");
    Ok(())
}

#[test]
fn sgd_nesterov_with_weight_decay_matches_reference() -> R {
    let cfg = sgd(0.9, true, 0.1);
    let got = run_ours(&cfg, &[0.1, 0.1, 0.1])?;
    let want = reference_sgd(&cfg, 0.1, 3);
    // Step 1 by hand: g = a*p + 0.1 p = [1.1, -1.2, 0.525]; buf = g; nesterov g' = g + 0.9 g = 1.9 g.
    assert_close(
        &got[0],
        &[1.0 - 0.209, -2.0 + 0.228, 0.25 - 0.09975],
        1e-12,
        "step 1 by hand",
    );
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(g, w, 1e-12, &format!("step {}", s + 1));
    }
    Ok(())
}

#[test]
fn sgd_momentum_f32_cpu_fast_path_matches_reference() -> R {
    // f32 parameters on CPU take the fused update from the second step on.
    let cfg = sgd(0.9, false, 0.1);
    let p = Var::from_tensor(&Tensor::new(&P0, &Device::Cpu)?.to_dtype(DType::F32)?)?;
    let mut opt = Optimizer::new(cfg.clone(), vec![("w".to_string(), p.clone())])?;
    let want = reference_sgd(&cfg, 0.1, 4);
    for (s, w) in want.iter().enumerate() {
        opt.step(&quad_grads(&p)?, 0.1)?;
        assert_eq!(p.dtype(), DType::F32);
        assert_close(&values(&p)?, w, 1e-6, &format!("f32 step {}", s + 1));
    }
    Ok(())
}

#[test]
fn sgd_weight_decay_without_momentum_matches_reference() -> R {
    let cfg = sgd(0.0, false, 0.5);
    let got = run_ours(&cfg, &[0.1, 0.1])?;
    // Step 1 by hand: g = (a + 0.5) p = [1.5, -2, 0.625]; p1 = p0 - 0.1 g.
    assert_close(&got[0], &[0.85, -1.8, 0.1875], 1e-12, "step 1 by hand");
    assert_close(&got[1], &reference_sgd(&cfg, 0.1, 2)[1], 1e-12, "step 2");
    Ok(())
}

#[test]
fn adamw_matches_reference_over_three_steps() -> R {
    let cfg = adamw(0.05);
    let lrs = [0.1, 0.05, 0.02];
    let got = run_ours(&cfg, &lrs)?;
    let want = reference_adamw(&cfg, &lrs);
    // Step 1 by hand: mhat = g, vhat = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
    let by_hand: Vec<f64> = (0..3)
        .map(|i| {
            let g = A[i] * P0[i];
            P0[i] * (1.0 - 0.1 * 0.05) - 0.1 * g / (g.abs() + 1e-8)
        })
        .collect();
    assert_close(&got[0], &by_hand, 1e-12, "step 1 by hand");
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(g, w, 1e-12, &format!("step {}", s + 1));
    }
    Ok(())
}

#[test]
fn params_without_grads_and_their_state_are_untouched() -> R {
    for cfg in [sgd(0.9, false, 0.1), adamw(0.1)] {
        let used = Var::from_slice(&P0, 3, &Device::Cpu)?;
        let idle = Var::from_slice(&[5.0f64, -6.0], 2, &Device::Cpu)?;
        let mut opt = Optimizer::new(
            cfg.clone(),
            vec![
                ("used".to_string(), used.clone()),
                ("idle".to_string(), idle.clone()),
            ],
        )?;
        for _ in 0..2 {
            opt.step(&quad_grads(&used)?, 0.1)?;
        }
        assert_eq!(
            values(&idle)?,
            vec![5.0, -6.0],
            "{:?}: idle param changed",
            cfg.kind
        );
        assert_ne!(values(&used)?, P0.to_vec());
        let names: Vec<String> = opt.state()?.into_iter().map(|(n, _)| n).collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".idle")),
            "{:?}: state for idle param: {names:?}",
            cfg.kind
        );
        assert!(
            names.iter().any(|n| n.ends_with(".used")),
            "{:?}: no state for used param: {names:?}",
            cfg.kind
        );

        // When the idle param first gets a gradient, its AdamW state starts at step 1
        // (PyTorch keeps a per-parameter step): the update is ~lr * sign(g).
        if cfg.kind == OptimizerKind::Adamw {
            let loss = (idle.as_tensor().sqr()?.sum_all()? * 0.5)?;
            opt.step(&loss.backward()?, 0.1)?;
            let want = [
                5.0 * (1.0 - 0.01) - 0.1 * 5.0 / (5.0 + 1e-8),
                -6.0 * (1.0 - 0.01) + 0.1 * 6.0 / (6.0 + 1e-8),
            ];
            assert_close(&values(&idle)?, &want, 1e-12, "idle param first AdamW step");
        }
    }
    Ok(())
}

fn f32_params() -> R<Vec<(String, Var)>> {
    let w = Tensor::new(&[[0.3f32, -1.2, 0.7], [2.0, -0.1, 0.05]], &Device::Cpu)?;
    let b = Tensor::new(&[0.5f32, -0.25], &Device::Cpu)?;
    Ok(vec![
        ("head.bias".to_string(), Var::from_tensor(&b)?),
        ("head.weight".to_string(), Var::from_tensor(&w)?),
    ])
}

/// A non-trivial loss over both params: sum((W x + b)^2) + sum(W^4).
fn f32_step(opt: &mut Optimizer, lr: f64) -> R {
    let params = opt.params().to_vec();
    let (b, w) = (params[0].1.as_tensor(), params[1].1.as_tensor());
    let x = Tensor::new(&[[1.0f32], [-0.5], [2.0]], &Device::Cpu)?;
    let y = w.matmul(&x)?.squeeze(1)?.add(b)?;
    let loss = (y.sqr()?.sum_all()? + w.sqr()?.sqr()?.sum_all()?)?;
    let mut grads = loss.backward()?;
    clip_grad_norm(&mut grads, &params, 5.0)?;
    opt.step(&grads, lr)
}

fn bits(params: &[(String, Var)]) -> R<Vec<Vec<u32>>> {
    params
        .iter()
        .map(|(_, v)| {
            Ok(v.as_tensor()
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f32::to_bits)
                .collect())
        })
        .collect()
}

#[test]
fn state_round_trip_through_a_file_resumes_bit_identically() -> R {
    let dir = tempfile::tempdir().map_err(|e| vssl::Error::io("tempdir", e))?;
    let lrs = [0.05, 0.04, 0.03, 0.02, 0.01];
    for cfg in [sgd(0.9, true, 1e-3), sgd(0.8, false, 0.0), adamw(0.05)] {
        // Uninterrupted run.
        let mut full = Optimizer::new(cfg.clone(), f32_params()?)?;
        for &lr in &lrs {
            f32_step(&mut full, lr)?;
        }

        // Interrupted after 2 steps: weights + optimizer state go through a checkpoint file.
        let mut first = Optimizer::new(cfg.clone(), f32_params()?)?;
        for &lr in &lrs[..2] {
            f32_step(&mut first, lr)?;
        }
        let mut tensors: Vec<(String, Tensor)> = first
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        tensors.extend(first.state()?);
        let path = dir
            .path()
            .join(format!("{:?}-{}.safetensors", cfg.kind, cfg.momentum));
        write_safetensors_atomic(&path, &tensors, &HashMap::new())?;

        let (loaded, _) = read_safetensors(&path, &Device::Cpu)?;
        let params: Vec<(String, Var)> = f32_params()?
            .into_iter()
            .map(|(n, _)| Ok((n.clone(), Var::from_tensor(&loaded[&n])?)))
            .collect::<R<_>>()?;
        let mut resumed = Optimizer::new(cfg.clone(), params)?;
        resumed.load_state(&loaded)?; // the weight tensors (no "optim." prefix) are ignored
        assert_eq!(resumed.steps_taken(), 2);
        for &lr in &lrs[2..] {
            f32_step(&mut resumed, lr)?;
        }
        assert_eq!(resumed.steps_taken(), full.steps_taken());
        assert_eq!(
            bits(resumed.params())?,
            bits(full.params())?,
            "{cfg:?}: resumed run differs"
        );
    }
    Ok(())
}

#[test]
fn load_state_rejects_bad_or_incomplete_state() -> R {
    let mut opt = Optimizer::new(adamw(0.0), f32_params()?)?;
    f32_step(&mut opt, 0.1)?;
    let good: BTreeMap<String, Tensor> = opt.state()?.into_iter().collect();
    assert!(good.contains_key("optim.step"));
    assert!(good.contains_key("optim.exp_avg.head.weight"));
    assert!(good.contains_key("optim.exp_avg_sq.head.bias"));

    let mut fresh = Optimizer::new(adamw(0.0), f32_params()?)?;
    let mut wrong_shape = good.clone();
    wrong_shape.insert(
        "optim.exp_avg.head.weight".into(),
        Tensor::zeros((3, 2), DType::F32, &Device::Cpu)?,
    );
    let err = fresh.load_state(&wrong_shape).unwrap_err().to_string();
    assert!(err.contains("optim.exp_avg.head.weight"), "{err}");
    assert_eq!(
        fresh.steps_taken(),
        0,
        "a failed load must not change anything"
    );

    let mut partial = good.clone();
    partial.remove("optim.exp_avg_sq.head.bias");
    let err = fresh.load_state(&partial).unwrap_err().to_string();
    assert!(err.contains("optim.exp_avg_sq.head.bias"), "{err}");

    let mut no_step = good.clone();
    no_step.remove("optim.step");
    let err = fresh.load_state(&no_step).unwrap_err().to_string();
    assert!(err.contains("optim.step"), "{err}");

    // SGD-with-momentum state does not fit an AdamW optimizer.
    let mut sgd_opt = Optimizer::new(sgd(0.9, false, 0.0), f32_params()?)?;
    f32_step(&mut sgd_opt, 0.1)?;
    let sgd_state: BTreeMap<String, Tensor> = sgd_opt.state()?.into_iter().collect();
    let err = fresh.load_state(&sgd_state).unwrap_err().to_string();
    assert!(err.contains("optim.momentum."), "{err}");

    let mut with_weights = good.clone();
    with_weights.insert(
        "head.weight".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu)?,
    );
    fresh.load_state(&with_weights)?;
    assert_eq!(fresh.steps_taken(), 1);
    Ok(())
}

#[test]
fn invalid_configs_are_rejected() -> R {
    assert!(
        Optimizer::new(sgd(0.0, true, 0.0), f32_params()?).is_err(),
        "nesterov without momentum"
    );
    assert!(
        Optimizer::new(sgd(0.9, false, -1.0), f32_params()?).is_err(),
        "negative weight decay"
    );
    let mut bad_betas = adamw(0.0);
    bad_betas.betas = [0.9, 1.0];
    assert!(
        Optimizer::new(bad_betas, f32_params()?).is_err(),
        "beta2 = 1"
    );
    let mut dup = f32_params()?;
    dup.push(dup[0].clone());
    assert!(
        Optimizer::new(sgd(0.9, false, 0.0), dup).is_err(),
        "duplicate names"
    );
    Ok(())
}

#[test]
fn clip_grad_norm_scales_large_grads_and_leaves_small_ones() -> R {
    let p1 = Var::new(&[3.0f32, 0.0], &Device::Cpu)?;
    let p2 = Var::new(&[4.0f32], &Device::Cpu)?;
    let params = vec![("a".to_string(), p1.clone()), ("b".to_string(), p2.clone())];
    // 0.5 * sum(p^2) has gradient p: global norm sqrt(9 + 16) = 5.
    let grads = || -> R<_> {
        Ok(
            ((p1.as_tensor().sqr()?.sum_all()? + p2.as_tensor().sqr()?.sum_all()?)? * 0.5)?
                .backward()?,
        )
    };
    let read = |g: &candle_core::backprop::GradStore, v: &Var| -> R<Vec<f32>> {
        Ok(g.get(v.as_tensor()).unwrap().to_vec1::<f32>()?)
    };

    let mut g = grads()?;
    let norm = clip_grad_norm(&mut g, &params, 1.0)?;
    assert!((norm - 5.0).abs() < 1e-6, "pre-clip norm {norm}");
    let coef = 1.0 / (5.0 + 1e-6);
    let (a, b) = (read(&g, &p1)?, read(&g, &p2)?);
    assert_close(
        &[a[0] as f64, a[1] as f64, b[0] as f64],
        &[3.0 * coef, 0.0, 4.0 * coef],
        1e-6,
        "clipped",
    );
    let new_norm = ((a[0] * a[0] + b[0] * b[0]) as f64).sqrt();
    assert!((new_norm - 1.0).abs() < 1e-5, "post-clip norm {new_norm}");

    let mut g = grads()?;
    let norm = clip_grad_norm(&mut g, &params, 10.0)?;
    assert!((norm - 5.0).abs() < 1e-6);
    assert_eq!(
        read(&g, &p1)?,
        vec![3.0, 0.0],
        "small grads must be left alone"
    );
    assert_eq!(read(&g, &p2)?, vec![4.0]);

    // Only the listed params count.
    let mut g = grads()?;
    let norm = clip_grad_norm(&mut g, &params[..1], 10.0)?;
    assert!((norm - 3.0).abs() < 1e-6, "norm over `a` only: {norm}");
    Ok(())
}

fn schedule(kind: ScheduleKind, warmup_steps: u64) -> Schedule {
    Schedule {
        plateau: None,
        kind,
        base_lr: 1.0,
        warmup_steps,
        total_steps: 110,
        milestones: vec![30, 60],
        gamma: 0.1,
        min_lr: 0.0,
    }
}

#[test]
fn schedule_values_at_hand_picked_steps() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;

    let cos = Schedule {
        min_lr: 0.1,
        ..schedule(ScheduleKind::Cosine, 10)
    };
    assert!(close(cos.lr_at(0), 0.1), "warm-up start: base/warmup");
    assert!(close(cos.lr_at(4), 0.5));
    assert!(close(cos.lr_at(9), 1.0), "warm-up end reaches base_lr");
    assert!(close(cos.lr_at(10), 1.0), "cosine starts at base_lr");
    assert!(
        close(cos.lr_at(60), 0.55),
        "cosine midpoint: (base+min)/2, got {}",
        cos.lr_at(60)
    );
    let last = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 99.0 / 100.0).cos());
    assert!(close(cos.lr_at(109), last), "final update");
    assert!(close(cos.lr_at(110), 0.1), "reaches min_lr at total_steps");
    assert!(close(cos.lr_at(1000), 0.1), "clamped after total_steps");

    let no_warm = schedule(ScheduleKind::Cosine, 0);
    assert!(close(no_warm.lr_at(0), 1.0));
    assert!(close(no_warm.lr_at(55), 0.5));

    let step = Schedule {
        base_lr: 0.5,
        ..schedule(ScheduleKind::Step, 0)
    };
    assert!(close(step.lr_at(0), 0.5));
    assert!(close(step.lr_at(29), 0.5));
    assert!(close(step.lr_at(30), 0.05), "first milestone");
    assert!(close(step.lr_at(59), 0.05));
    assert!(close(step.lr_at(60), 0.005), "second milestone");
    assert!(close(step.lr_at(10_000), 0.005));

    let warm_step = schedule(ScheduleKind::Step, 4);
    assert!(close(warm_step.lr_at(0), 0.25));
    assert!(close(warm_step.lr_at(3), 1.0));

    let constant = schedule(ScheduleKind::Constant, 4);
    assert!(close(constant.lr_at(0), 0.25));
    assert!(close(constant.lr_at(1), 0.5));
    assert!(close(constant.lr_at(3), 1.0));
    assert!(close(constant.lr_at(500), 1.0));
}

#[test]
fn kinds_serialize_lowercase() {
    assert_eq!(
        serde_json::to_string(&ScheduleKind::Cosine).unwrap(),
        "\"cosine\""
    );
    assert_eq!(
        serde_json::to_string(&OptimizerKind::Adamw).unwrap(),
        "\"adamw\""
    );
    assert_eq!(
        serde_json::from_str::<OptimizerKind>("\"sgd\"").unwrap(),
        OptimizerKind::Sgd
    );
    assert_eq!(
        serde_json::from_str::<ScheduleKind>("\"step\"").unwrap(),
        ScheduleKind::Step
    );
}

#[test]
fn atomic_write_round_trips_values_dtypes_and_metadata() -> R {
    let dir = tempfile::tempdir().map_err(|e| vssl::Error::io("tempdir", e))?;
    let path = dir.path().join("ckpt.safetensors");
    let f = Tensor::new(&[[1.5f32, -2.0, 3.25], [0.0, 1e-7, -4.5]], &Device::Cpu)?;
    let i = Tensor::new(&[7i64, -1, i64::MAX], &Device::Cpu)?;
    let h = Tensor::new(&[1.0f32, 0.5], &Device::Cpu)?.to_dtype(DType::BF16)?;
    let meta = HashMap::from([
        ("step".to_string(), "12".to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);

    // An older file at the destination is replaced.
    write_safetensors_atomic(&path, &[("old".to_string(), i.clone())], &HashMap::new())?;
    write_safetensors_atomic(
        &path,
        &[
            ("w".into(), f.clone()),
            ("optim.step".into(), i.clone()),
            ("h".into(), h),
        ],
        &meta,
    )?;

    let (tensors, got_meta) = read_safetensors(&path, &Device::Cpu)?;
    assert_eq!(
        tensors.keys().collect::<Vec<_>>(),
        vec!["h", "optim.step", "w"]
    );
    assert_eq!(tensors["w"].dtype(), DType::F32);
    assert_eq!(tensors["w"].to_vec2::<f32>()?, f.to_vec2::<f32>()?);
    assert_eq!(tensors["optim.step"].dtype(), DType::I64);
    assert_eq!(
        tensors["optim.step"].to_vec1::<i64>()?,
        vec![7, -1, i64::MAX]
    );
    assert_eq!(tensors["h"].dtype(), DType::BF16);
    assert_eq!(
        tensors["h"].to_dtype(DType::F32)?.to_vec1::<f32>()?,
        vec![1.0, 0.5]
    );
    assert_eq!(got_meta, meta);

    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .map_err(|e| vssl::Error::io(dir.path(), e))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        vec!["ckpt.safetensors"],
        "temporary file left behind"
    );

    // Without metadata nothing is invented (no forced "format").
    write_safetensors_atomic(&path, &[("w".into(), f)], &HashMap::new())?;
    assert!(read_safetensors(&path, &Device::Cpu)?.1.is_empty());
    Ok(())
}

#[test]
fn truncated_corrupt_or_missing_files_are_errors_naming_the_path() -> R {
    let dir = tempfile::tempdir().map_err(|e| vssl::Error::io("tempdir", e))?;
    let path = dir.path().join("model.safetensors");
    let t = Tensor::arange(0f32, 64., &Device::Cpu)?;
    write_safetensors_atomic(
        &path,
        &[("t".into(), t)],
        &HashMap::from([("k".into(), "v".into())]),
    )?;
    let bytes = std::fs::read(&path).map_err(|e| vssl::Error::io(&path, e))?;
    let shown = path.display().to_string();

    for (what, content) in [
        ("truncated data", bytes[..bytes.len() - 10].to_vec()),
        ("truncated header", bytes[..20].to_vec()),
        ("only a length", bytes[..4].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
    ] {
        std::fs::write(&path, &content).map_err(|e| vssl::Error::io(&path, e))?;
        let err = read_safetensors(&path, &Device::Cpu).expect_err(what);
        assert!(
            err.to_string().contains(&shown),
            "{what}: error does not name the path: {err}"
        );
        assert!(err.is_bad_input(), "{what}: {err}");
    }

    let missing = dir.path().join("nope.safetensors");
    let err = read_safetensors(&missing, &Device::Cpu).expect_err("missing file");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    Ok(())
}

/// `train::update`: one backward, the clip over every group's parameters, then each
/// group steps at its own rate (plain SGD: `p -= lr * clipped_grad`).
#[test]
fn update_clips_over_all_groups_and_steps_each_at_its_rate() -> R {
    let p1 = Var::new(&[3.0f32, 0.0], &Device::Cpu)?;
    let p2 = Var::new(&[4.0f32], &Device::Cpu)?;
    let mut o1 = Optimizer::new(sgd(0.0, false, 0.0), vec![("a".into(), p1.clone())])?;
    let mut o2 = Optimizer::new(sgd(0.0, false, 0.0), vec![("b".into(), p2.clone())])?;
    // 0.5 * sum(p^2) has gradient p: global norm 5, clipped to 1.
    let loss = ((p1.as_tensor().sqr()?.sum_all()? + p2.as_tensor().sqr()?.sum_all()?)? * 0.5)?;
    let norm = vssl::train::update(&loss, &mut [(&mut o1, 0.5), (&mut o2, 2.0)], 1.0)?;
    assert!((norm.unwrap() - 5.0).abs() < 1e-6, "pre-clip norm {norm:?}");
    let coef = 1.0 / (5.0 + 1e-6);
    let (a, b) = (
        p1.as_tensor().to_vec1::<f32>()?,
        p2.as_tensor().to_vec1::<f32>()?,
    );
    assert_close(
        &[a[0] as f64, a[1] as f64, b[0] as f64],
        &[3.0 - 0.5 * 3.0 * coef, 0.0, 4.0 - 2.0 * 4.0 * coef],
        1e-6,
        "stepped",
    );
    // No clip: no norm, raw gradients.
    let loss = (p2.as_tensor().sqr()?.sum_all()? * 0.5)?;
    assert_eq!(
        vssl::train::update(&loss, &mut [(&mut o2, 1.0)], 0.0)?,
        None
    );
    let after = p2.as_tensor().to_vec1::<f32>()?[0];
    assert!(
        after.abs() < 1e-6,
        "lr 1 on 0.5 p^2 lands on 0, got {after}"
    );
    Ok(())
}

fn plateau(patience: u64, warmup: Vec<f64>) -> Schedule {
    Schedule {
        plateau: Some((
            PlateauConfig {
                steps_per_epoch: 2,
                patience,
                factor: 0.1,
                warmup,
            },
            PlateauState::default(),
        )),
        ..schedule(ScheduleKind::Plateau, 0)
    }
}

/// Feeds `epoch_means` (two steps of each epoch, `mean +- 0.5`) from epoch `from` on and
/// returns the rate of the first step of every following epoch.
fn feed(s: &mut Schedule, from: u64, epoch_means: &[f64]) -> Vec<f64> {
    let mut rates = vec![];
    for (i, m) in epoch_means.iter().enumerate() {
        let step = (from + i as u64) * 2;
        s.observe(step, m - 0.5);
        s.observe(step + 1, m + 0.5);
        rates.push(s.lr_at(step + 2));
    }
    rates
}

#[test]
fn plateau_warms_up_then_drops_by_factor_after_patience_bad_epochs() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let mut s = plateau(2, vec![0.01, 0.1, 1.0]);
    assert!(
        close(s.lr_at(0), 0.01) && close(s.lr_at(1), 0.01),
        "warm-up epoch 0"
    );
    // Epoch means: 5 (best), 4 (best), 4 (equal: not bad), 4.5 (bad 1), 4.2 (bad 2: drop),
    // 4.1 (bad 1 against 4), 3 (best), 3.5, 3.5 (bad 2: second drop).
    let rates = feed(&mut s, 0, &[5.0, 4.0, 4.0, 4.5, 4.2, 4.1, 3.0, 3.5, 3.5]);
    let want = [0.1, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01];
    for (e, (r, w)) in rates.iter().zip(want).enumerate() {
        assert!(close(*r, w), "epoch {}: lr {r}, want {w}", e + 1);
    }
    // Within an epoch the rate does not move.
    assert!(close(s.lr_at(19), s.lr_at(18)));
}

#[test]
fn plateau_state_round_trips_so_resume_is_exact() {
    let means = [5.0, 4.0, 4.5, 4.6, 3.0, 3.1, 3.2, 3.3];
    let mut straight = plateau(2, vec![0.5]);
    let all = feed(&mut straight, 0, &means);
    // Stop in the middle of epoch 3 (one of its two steps seen), restore, continue.
    let mut first = plateau(2, vec![0.5]);
    let mut rates = feed(&mut first, 0, &means[..3]);
    first.observe(6, means[3] - 0.5);
    let state: BTreeMap<String, Tensor> = first.state().unwrap().into_iter().collect();
    let mut resumed = plateau(2, vec![0.5]);
    resumed.load_state(&state).unwrap();
    assert_eq!(resumed.plateau, first.plateau, "state restored intact");
    resumed.observe(7, means[3] + 0.5);
    rates.push(resumed.lr_at(8));
    rates.extend(feed(&mut resumed, 4, &means[4..]));
    assert_eq!(rates, all);
    assert_eq!(resumed.plateau, straight.plateau);
    assert!(all.iter().any(|&r| r < 1.0), "a drop happened: {all:?}");
    // A plateau run cannot resume from a checkpoint without the state.
    assert!(plateau(2, vec![]).load_state(&BTreeMap::new()).is_err());
    // The stateless kinds save nothing (their checkpoints are unchanged).
    assert!(schedule(ScheduleKind::Cosine, 0)
        .state()
        .unwrap()
        .is_empty());
}

/// `train.schedule = "plateau"` through the CLI: the checkpoint carries the schedule's
/// state and a run stopped mid-epoch and resumed logs the same rates and losses and
/// ends with the same weights as the straight run.
#[test]
fn plateau_run_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    // 16 videos at batch 8: 2 steps per epoch; 3 steps stop inside epoch 1.
    let extra = "[train]\nschedule = \"plateau\"\nwarmup_steps = 0\nbatch_size = 8\nsteps = 8\n\
                 patience = 1\nwarmup_multipliers = [0.1, 1.0]\nlr = 0.5";
    let r = super::common::tiny_recipe(d.path(), extra);
    let (straight, resumed) = super::common::straight_and_resumed(d.path(), &r, "plateau");
    let ckpt = RunDir::new(&resumed).checkpoints();
    let t = super::common::tensors(&ckpt.last().unwrap().1);
    assert!(t.contains_key("schedule.plateau"), "{:?}", t.keys());
    let col = |run: &std::path::Path, k: &str| super::common::metric_column(run, k);
    assert_eq!(col(&straight, "lr"), col(&resumed, "lr"));
    assert_eq!(col(&straight, "loss"), col(&resumed, "loss"));
    let lr = col(&straight, "lr");
    assert!(
        (lr[0] - 0.05).abs() < 1e-12 && (lr[2] - 0.5).abs() < 1e-12,
        "{lr:?}"
    );
    super::common::assert_bit_identical(
        &super::common::tensors(&straight.join("model.safetensors")),
        &super::common::tensors(&resumed.join("model.safetensors")),
    );
}
