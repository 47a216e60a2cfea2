//! TemporalContrast (TCLR): the masked NT-Xent and global-local losses against hand
//! computations, finite differences and their invariances; the sparse/dense clip
//! planner's alignment; the method's loss switches; exact resume.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use vssl::backbone;
use vssl::data::clip::{Batch, ClipPlanner};
use vssl::loss::{global_local, l2_normalize, nt_xent_masked, nt_xent_rows, PairMasks};
use vssl::nn::VarStore;
use vssl::pretext::temporal_contrast::{
    gl_slices, sparse_dense_plan, time_groups, weighted_sum, Embeddings, SparseDensePlanner,
    SparseDenseSpec, TemporalContrast, VIEWS,
};
use vssl::pretext::{
    BnBatches, IcDense, LlReduction, Pretext, Tclr, TemporalContrastConfig, TemporalContrastMethod,
};
use vssl::recipe::BackboneConfig;

use super::common::{
    assert_bit_identical, metric_column, run, stderr, straight_and_resumed, tensors,
    tiny_recipe_for, vssl,
};

const CPU: Device = Device::Cpu;

fn t2(rows: &[Vec<f64>]) -> Tensor {
    let d = rows[0].len();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), d), &CPU).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn mask_rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// Random unit vectors `[n, d]` (f64).
fn unit(n: usize, d: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..d).map(|_| rng.random::<f64>() - 0.5).collect())
        .collect();
    l2_normalize(&t2(&rows)).unwrap()
}

#[test]
fn nt_xent_matches_hand_computation() {
    // Two videos with two views each; tau = 0.5.
    let z = t2(&[
        vec![1.0, 0.0],
        vec![0.6, 0.8],
        vec![0.0, 1.0],
        vec![-1.0, 0.0],
    ]);
    let m = PairMasks::instance(&[0, 0, 1, 1], &CPU).unwrap();
    let rows = nt_xent_rows(&z, &m, 0.5).unwrap().to_vec1::<f64>().unwrap();
    // Row 0: positive s01 = 0.6 / 0.5 = 1.2, negatives s02 = 0, s03 = -2.
    let row0 = -1.2 + (1.2f64.exp() + 1.0 + (-2f64).exp()).ln();
    assert!((rows[0] - row0).abs() < 1e-12, "{} vs {row0}", rows[0]);
    // Python reference of all four rows.
    let want = [
        0.2941285610404085,
        0.9487744372405003,
        1.939177884473635,
        0.36223013187438935,
    ];
    for (g, w) in rows.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{rows:?}");
    }
    let mean = scalar(&nt_xent_masked(&z, &m, 0.5).unwrap());
    assert!((mean - 0.8860777536572333).abs() < 1e-12, "{mean}");
}

#[test]
fn masks_keep_same_video_out_of_instance_negatives_and_other_videos_out_of_ll() {
    // Instance: same video = positive, never negative.
    let m = PairMasks::instance(&[0, 0, 1], &CPU).unwrap();
    assert_eq!(
        mask_rows(&m.pos),
        vec![vec![0., 1., 0.], vec![1., 0., 0.], vec![0., 0., 0.]]
    );
    assert_eq!(
        mask_rows(&m.neg),
        vec![vec![0., 0., 1.], vec![0., 0., 1.], vec![1., 1., 0.]]
    );
    // Local-local, rows (video, view, clip) for 2 videos x 2 views x 2 clips: positive
    // is the other view of the same clip, negatives the other clip of the same video
    // (both views), and nothing of the other video.
    let (v, n) = (2, 2);
    let video: Vec<usize> = (0..8).map(|r| r / (v * n)).collect();
    let part: Vec<usize> = (0..8).map(|r| r % n).collect();
    let m = PairMasks::within_group(&video, &part, &CPU).unwrap();
    let (pos, neg) = (mask_rows(&m.pos), mask_rows(&m.neg));
    assert_eq!(pos[0], vec![0., 0., 1., 0., 0., 0., 0., 0.]);
    assert_eq!(neg[0], vec![0., 1., 0., 1., 0., 0., 0., 0.]);
    assert_eq!(pos[5], vec![0., 0., 0., 0., 0., 0., 0., 1.]);
    assert_eq!(neg[5], vec![0., 0., 0., 0., 1., 0., 1., 0.]);
    // So moving the other video's clips leaves LL of video 0 unchanged, moving a
    // same-video clip does not.
    let z = unit(8, 5, 1);
    let ll = |z: &Tensor| nt_xent_rows(z, &m, 0.1).unwrap().to_vec1::<f64>().unwrap();
    let base = ll(&z);
    let mut rows = z.to_vec2::<f64>().unwrap();
    rows[6] = vec![0.0, 0.0, 0.0, 0.0, 1.0];
    let other = ll(&t2(&rows));
    assert_eq!(&base[..4], &other[..4]);
    let mut rows = z.to_vec2::<f64>().unwrap();
    rows[1] = vec![0.0, 0.0, 0.0, 0.0, 1.0];
    assert_ne!(base[0], ll(&t2(&rows))[0]);
}

#[test]
fn identical_views_give_the_minimum() {
    let tau = 0.1;
    let m = PairMasks::instance(&[0, 0, 1, 1, 2, 2], &CPU).unwrap();
    let base = unit(6, 4, 2);
    let mut rows = base.to_vec2::<f64>().unwrap();
    rows[1] = rows[0].clone();
    let z = t2(&rows);
    let row0 = |z: &Tensor| nt_xent_rows(z, &m, tau).unwrap().to_vec1::<f64>().unwrap()[0];
    // Identical positive: -1/tau + log(e^{1/tau} + sum_n e^{s_n/tau}).
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let want = (1.0
        + (2..6)
            .map(|k| ((dot(&rows[0], &rows[k]) - 1.0) / tau).exp())
            .sum::<f64>())
    .ln();
    let best = row0(&z);
    assert!((best - want).abs() < 1e-10, "{best} vs {want}");
    // Any other positive (negatives fixed) costs more.
    for s in 0..50 {
        let mut r = rows.clone();
        r[1] = unit(1, 4, 100 + s).to_vec2::<f64>().unwrap()[0].clone();
        assert!(row0(&t2(&r)) > best, "positive {s}");
    }
    // Orthogonal videos with identical views: every row costs log(1 + 4 e^{-1/tau}).
    let e = Tensor::eye(3, DType::F64, &CPU).unwrap();
    let z = Tensor::cat(
        &[
            e.narrow(0, 0, 1).unwrap(),
            e.narrow(0, 0, 1).unwrap(),
            e.narrow(0, 1, 1).unwrap(),
            e.narrow(0, 1, 1).unwrap(),
            e.narrow(0, 2, 1).unwrap(),
            e.narrow(0, 2, 1).unwrap(),
        ],
        0,
    )
    .unwrap();
    let got = scalar(&nt_xent_masked(&z, &m, tau).unwrap());
    let want = (1.0 + 4.0 * (-1.0 / tau).exp()).ln();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // GL: slices identical to their dense clips, orthonormal, give log(1 + 3 e^{-1/tau}).
    let s = Tensor::eye(4, DType::F64, &CPU)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got = scalar(&global_local(&s, &s, tau).unwrap());
    let want = (1.0 + 3.0 * (-1.0 / tau).exp()).ln();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn shuffling_negatives_leaves_the_loss_unchanged() {
    let (b, v, n) = (4, 2, 3);
    let z = unit(b * v * n, 6, 3);
    let video: Vec<usize> = (0..b * v * n).map(|r| r / (v * n)).collect();
    let part: Vec<usize> = (0..b * v * n).map(|r| r % n).collect();
    let ic = PairMasks::instance(&video, &CPU).unwrap();
    let ll = PairMasks::within_group(&video, &part, &CPU).unwrap();
    let l_ic = scalar(&nt_xent_masked(&z, &ic, 0.1).unwrap());
    let l_ll = scalar(&nt_xent_masked(&z, &ll, 0.1).unwrap());
    // Reorder the videos (3 1 0 2) and, inside each, the dense clips (2 0 1): the
    // negatives of every anchor arrive in another order.
    let vids = [3usize, 1, 0, 2];
    let clips = [2usize, 0, 1];
    let mut perm = Vec::new();
    for &bv in &vids {
        for w in 0..v {
            for &c in &clips {
                perm.push((bv * v * n + w * n + c) as u32);
            }
        }
    }
    let idx = Tensor::from_vec(perm, b * v * n, &CPU).unwrap();
    let zp = z.index_select(&idx, 0).unwrap();
    let video_p: Vec<usize> = (0..b * v * n).map(|r| r / (v * n)).collect();
    let part_p: Vec<usize> = (0..b * v * n).map(|r| r % n).collect();
    let ic_p = PairMasks::instance(&video_p, &CPU).unwrap();
    let ll_p = PairMasks::within_group(&video_p, &part_p, &CPU).unwrap();
    let g_ic = scalar(&nt_xent_masked(&zp, &ic_p, 0.1).unwrap());
    let g_ll = scalar(&nt_xent_masked(&zp, &ll_p, 0.1).unwrap());
    assert!((l_ic - g_ic).abs() < 1e-12, "{l_ic} vs {g_ic}");
    assert!((l_ll - g_ll).abs() < 1e-12, "{l_ll} vs {g_ll}");
    // GL: the same permutation applied to the slices and to their dense clips.
    let s = unit(6, 6, 4).reshape((2, 3, 6)).unwrap();
    let d = unit(6, 6, 5).reshape((2, 3, 6)).unwrap();
    let p = Tensor::new(&[2u32, 0, 1], &CPU).unwrap();
    let a = scalar(&global_local(&s, &d, 0.1).unwrap());
    let b2 = scalar(
        &global_local(
            &s.index_select(&p, 1).unwrap(),
            &d.index_select(&p, 1).unwrap(),
            0.1,
        )
        .unwrap(),
    );
    assert!((a - b2).abs() < 1e-12, "{a} vs {b2}");
}

#[test]
fn global_local_targets_align_slice_i_with_dense_clip_i() {
    // Slices a0 = (1,0), a1 = (0,1); dense b0 = (0.8,0.6), b1 = (0,1); tau = 1:
    // sim = [[0.8, 0], [0.6, 1]], cross-entropy towards the diagonal on rows and columns.
    let s = t2(&[vec![1.0, 0.0], vec![0.0, 1.0]]).unsqueeze(0).unwrap();
    let d = t2(&[vec![0.8, 0.6], vec![0.0, 1.0]]).unsqueeze(0).unwrap();
    let e = f64::exp;
    let r0 = -0.8 + (e(0.8) + 1.0).ln();
    let r1 = -1.0 + (e(0.6) + e(1.0)).ln();
    let c0 = -0.8 + (e(0.8) + e(0.6)).ln();
    let c1 = -1.0 + (1.0 + e(1.0)).ln();
    let want = 0.5 * ((r0 + r1) / 2.0 + (c0 + c1) / 2.0);
    let got = scalar(&global_local(&s, &d, 1.0).unwrap());
    assert!((got - want).abs() < 1e-12 && (want - 0.44887911881188625).abs() < 1e-12);
    // Swapping the dense clips (slice 0 now faces the clip that matches slice 1) costs more.
    let swapped = d
        .index_select(&Tensor::new(&[1u32, 0], &CPU).unwrap(), 1)
        .unwrap();
    assert!(scalar(&global_local(&s, &swapped, 1.0).unwrap()) > got + 0.1);

    // The time slices of a feature map: slice i averages steps i*T/S .. (i+1)*T/S.
    let x = Tensor::arange(0f64, 8.0, &CPU)
        .unwrap()
        .reshape((1, 2, 4))
        .unwrap();
    let g = time_groups(&x, 2).unwrap().to_vec3::<f64>().unwrap();
    assert_eq!(g, vec![vec![vec![0.5, 4.5], vec![2.5, 6.5]]]);
    let g = time_groups(&x, 4).unwrap().to_vec3::<f64>().unwrap();
    assert_eq!(g[0][3], vec![3.0, 7.0]);
    assert_eq!(gl_slices(4, 4).unwrap(), 4);
    assert_eq!(gl_slices(2, 4).unwrap(), 2);
    assert_eq!(gl_slices(8, 4).unwrap(), 4);
    assert!(gl_slices(3, 4)
        .unwrap_err()
        .to_string()
        .contains("dense_clips"));
}

#[test]
fn nt_xent_gradient_matches_finite_differences() {
    // Video 0 has four rows (three positives per anchor), video 1 two: the
    // multi-positive path with both masks in play.
    let m = PairMasks::instance(&[0, 0, 0, 0, 1, 1], &CPU).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let x: Vec<f64> = (0..18).map(|_| rng.random::<f64>() - 0.5).collect();
    let f = |x: &Tensor| -> Tensor { nt_xent_masked(&l2_normalize(x).unwrap(), &m, 0.2).unwrap() };
    let var = Var::from_vec(x.clone(), (6, 3), &CPU).unwrap();
    let grads = f(var.as_tensor()).backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let h = 1e-6;
    for i in 0..18 {
        let mut xp = x.clone();
        xp[i] += h;
        let mut xm = x.clone();
        xm[i] -= h;
        let fp = scalar(&f(&Tensor::from_vec(xp, (6, 3), &CPU).unwrap()));
        let fm = scalar(&f(&Tensor::from_vec(xm, (6, 3), &CPU).unwrap()));
        let fd = (fp - fm) / (2.0 * h);
        assert!((fd - g[i]).abs() < 1e-6, "entry {i}: {} vs {fd}", g[i]);
    }
}

#[test]
fn dense_clip_i_covers_part_i_of_the_sparse_clip() {
    let spec = SparseDenseSpec {
        stride: 4,
        dense: 4,
        views: 2,
    };
    for seed in 0..40u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let len = 64 + (seed as usize % 30);
        let clips = sparse_dense_plan(len, 16, &spec, &mut rng);
        assert_eq!(clips.len(), 10);
        let s = clips[0].start;
        // Fits: the footprint (64 frames) lies inside the video.
        assert!(s + 63 < len, "seed {seed}: start {s} in {len}");
        assert_eq!(
            clips[0].indices,
            (0..16).map(|k| s + 4 * k).collect::<Vec<_>>()
        );
        for i in 0..4 {
            let d = &clips[1 + i];
            assert_eq!(d.indices, (s + 16 * i..s + 16 * i + 16).collect::<Vec<_>>());
            assert_eq!((d.meta.speed, d.meta.reverse), (1, false));
            // The sparse frames of quarter i (sparse steps 4i..4i+4) lie in dense clip i.
            for k in 4 * i..4 * i + 4 {
                assert!(d.indices.contains(&clips[0].indices[k]));
            }
        }
        // View-major: view 1 repeats view 0's frames.
        for k in 0..5 {
            assert_eq!(
                clips[spec.position(1, k)].indices,
                clips[spec.position(0, k)].indices
            );
        }
    }
    // The quick recipe's geometry: 8 frames at stride 4 span the whole 32-frame video.
    let quick = SparseDenseSpec {
        stride: 4,
        dense: 4,
        views: 2,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let c = sparse_dense_plan(32, 8, &quick, &mut rng);
    assert_eq!(c[0].indices, vec![0, 4, 8, 12, 16, 20, 24, 28]);
    assert_eq!(c[4].indices, (24..32).collect::<Vec<_>>());
    // Too short: wraps around instead of failing.
    let c = sparse_dense_plan(40, 16, &spec, &mut rng);
    assert!(c.iter().all(|p| p.indices.iter().all(|&i| i < 40)));
    // The planner plans the layout's clip count and checks the layout.
    let good = SparseDensePlanner {
        spec: spec.clone(),
        frames: 16,
    };
    assert_eq!(good.clips_per_video(), 10);
    assert_eq!(good.plan(80, &mut rng).unwrap().len(), 10);
    let bad = SparseDensePlanner {
        spec: SparseDenseSpec { dense: 3, ..spec },
        frames: 16,
    };
    assert!(bad.plan(80, &mut rng).is_err());
}

fn tclr(cfg: TemporalContrastConfig) -> TemporalContrastMethod<Tclr> {
    let bcfg = BackboneConfig {
        widths: [4, 8, 8, 8],
        temporal_dilation_last_stage: true,
        ..Default::default()
    };
    let net = backbone::build(&bcfg, &VarStore::new(&CPU, 3), 8).unwrap();
    cfg.init(8, net, VarStore::new(&CPU, 9)).unwrap()
}

/// A small TCLR config (sparse stride 2, 8 -> 4 projection) and a batch of `b` videos'
/// clips for it.
fn small_tclr(b: usize) -> (TemporalContrastConfig, Tensor) {
    let cfg = TemporalContrastConfig {
        sparse_stride: 2,
        proj_hidden: 8,
        proj_dim: 4,
        ..Default::default()
    };
    let clips = Tensor::randn(0f32, 1.0, (b * 10, 3, 8, 16, 16), &CPU).unwrap();
    (cfg, clips)
}

#[test]
fn method_switches_losses_by_weight_and_reduction() {
    let b = 3;
    let (base, clips) = small_tclr(b);
    let m = tclr(base.clone());
    assert_eq!(m.planner().clips_per_video(), 10);
    let e = m.embed(&clips, b, false).unwrap();
    assert_eq!(e.sparse.dims(), &[b * VIEWS, 4]);
    assert_eq!(e.dense.dims(), &[b * VIEWS * 4, 4]);
    // r3d_small with the last stage dilated keeps T' = 2 of 8 frames: two GL slices
    // against two pairs of dense clips.
    let (s, d) = e.gl.clone().unwrap();
    assert_eq!(s.dims(), &[b * VIEWS, 2, 4]);
    assert_eq!(d.dims(), &[b * VIEWS, 2, 4]);
    let all = m.method().losses(&e, b).unwrap();
    let (ic, ll, gl) = (
        scalar(all.ic.as_ref().unwrap()),
        scalar(all.ll.as_ref().unwrap()),
        scalar(all.gl.as_ref().unwrap()),
    );
    let total = weighted_sum(&m.method().terms(&e, b).unwrap()).unwrap();
    assert!((scalar(&total) - (ic + ll + gl)).abs() < 1e-5);
    // GL pairs every slice view with every dense view and averages the four.
    let (s4, d4) = (
        s.reshape((b, VIEWS, 2, 4)).unwrap(),
        d.reshape((b, VIEWS, 2, 4)).unwrap(),
    );
    let mut want = 0.0;
    for a in 0..VIEWS {
        for c in 0..VIEWS {
            let sa = s4.narrow(1, a, 1).unwrap().squeeze(1).unwrap();
            let dc = d4.narrow(1, c, 1).unwrap().squeeze(1).unwrap();
            want += scalar(&global_local(&sa, &dc, 0.1).unwrap()) / 4.0;
        }
    }
    assert!((gl - want).abs() < 1e-5, "{gl} vs {want}");
    // IC only (the paper's ablation): nothing else computed.
    let only = tclr(TemporalContrastConfig {
        w_ll: 0.0,
        w_gl: 0.0,
        ..base.clone()
    });
    let l = only.method().losses(&e, b).unwrap();
    assert!(l.ll.is_none() && l.gl.is_none());
    assert!((scalar(l.ic.as_ref().unwrap()) - ic).abs() < 1e-6);
    // Without the dense term IC is the sparse NT-Xent alone.
    let sparse_only = tclr(TemporalContrastConfig {
        ic_dense: IcDense::Off,
        ..base.clone()
    });
    let ids: Vec<usize> = (0..b * VIEWS).map(|r| r / VIEWS).collect();
    let want =
        scalar(&nt_xent_masked(&e.sparse, &PairMasks::instance(&ids, &CPU).unwrap(), 0.1).unwrap());
    let got = scalar(
        sparse_only
            .method()
            .losses(&e, b)
            .unwrap()
            .ic
            .as_ref()
            .unwrap(),
    );
    assert!((got - want).abs() < 1e-6 && got < ic);
    // "sum" weights LL by the number of videos.
    let sum = tclr(TemporalContrastConfig {
        ll_reduction: LlReduction::Sum,
        ..base.clone()
    });
    let got = scalar(sum.method().losses(&e, b).unwrap().ll.as_ref().unwrap());
    assert!((got - b as f64 * ll).abs() < 1e-5, "{got} vs {b} x {ll}");
    // GL that cannot align is a clear error, not a panic.
    let e2 = Embeddings { gl: None, ..e };
    assert!(m.method().losses(&e2, b).is_err());
    let mut p = tclr(TemporalContrastConfig {
        dense_clips: 3,
        sparse_stride: 3,
        ..base
    });
    let batch = Batch {
        clips: Tensor::randn(0f32, 1.0, (8, 3, 8, 16, 16), &CPU).unwrap(),
        videos: 1,
        clip_meta: vec![],
        seed: 1,
        slice: vssl::data::clip::BatchSlice::whole(1),
    };
    let err = p.step(&batch, true).unwrap_err().to_string();
    assert!(err.contains("dense_clips"), "{err}");
}

/// A tiny TCLR recipe: 8-frame clips of 16-frame videos, sparse stride 2, T' = 2.
fn tiny_tclr_recipe(dir: &std::path::Path) -> std::path::PathBuf {
    tiny_recipe_for(
        dir,
        "temporal_contrast",
        "sparse_stride = 2\nproj_hidden = 8\nproj_dim = 4",
        "[data]\nframes = 8\n[backbone]\ntemporal_dilation_last_stage = true",
    )
}

#[test]
fn resume_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_tclr_recipe(d.path());
    let (straight, resumed) = straight_and_resumed(d.path(), &r, "tclr");
    let a = tensors(&straight.join("model.safetensors"));
    let b = tensors(&resumed.join("model.safetensors"));
    for k in ["pretext.proj.fc1.weight", "pretext.proj.bn2.running_var"] {
        assert!(a.contains_key(k), "{k} saved");
    }
    assert_bit_identical(&a, &b);
    let col = metric_column;
    for key in ["loss", "ic", "ll", "gl"] {
        assert_eq!(col(&straight, key).len(), 6, "{key}");
        assert_eq!(col(&straight, key), col(&resumed, key), "{key}");
    }
}

#[test]
fn recipe_checks_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_tclr_recipe(d.path());
    let bad = |sets: &[&str], key: &str| {
        let mut args = vec!["recipe", r.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = run(&mut vssl(&args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{sets:?}: {err}");
        assert!(
            err.contains(key) && !err.contains("panicked"),
            "{sets:?}: {err}"
        );
    };
    bad(&["method.temperature=0"], "method.temperature");
    bad(&["method.w_ll=-1"], "method.w_ll");
    bad(
        &["method.w_ic=0", "method.w_ll=0", "method.w_gl=0"],
        "method.w_ic",
    );
    bad(&["method.dense_clips=3"], "method.dense_clips"); // 8 x 2 = 16 frames
    bad(&["method.sparse_stride=0"], "method.sparse_stride");
    bad(&["method.ll_reduction=\"max\""], "method.ll_reduction");
    bad(&["method.views=3"], "method.views");
    let o = run(&mut vssl(&[
        "recipe",
        r.to_str().unwrap(),
        "--set",
        "method.w_gl=0",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `bn_batches = "per_clip_type"` runs one backbone pass per clip type and view: in eval
/// mode (running statistics) it is the same function as one joint pass, in training mode
/// each pass normalises with its own batch statistics, so the embeddings differ; every
/// clip still lands in its own row.
#[test]
fn per_clip_type_bn_batches_change_only_the_batch_statistics() {
    let b = 3;
    let (base, clips) = small_tclr(b);
    let joint = tclr(base.clone());
    let split = tclr(TemporalContrastConfig {
        bn_batches: BnBatches::PerClipType,
        ..base
    });
    let diff = |a: &Tensor, c: &Tensor| scalar(&(a - c).unwrap().abs().unwrap().max_all().unwrap());
    let (ej, es) = (
        joint.embed(&clips, b, false).unwrap(),
        split.embed(&clips, b, false).unwrap(),
    );
    assert!(diff(&ej.sparse, &es.sparse) < 1e-5 && diff(&ej.dense, &es.dense) < 1e-5);
    let (ej, es) = (
        joint.embed(&clips, b, true).unwrap(),
        split.embed(&clips, b, true).unwrap(),
    );
    assert!(
        diff(&ej.dense, &es.dense) > 1e-3,
        "per-clip-type BN batches had no effect"
    );
}

/// The dense instance term's three forms: "off" adds nothing, "pairwise" (the code's)
/// weighs about 14x "multi_positive" at this batch, and `w_ic_dense` scales the added term.
#[test]
fn ic_dense_forms_and_weight() {
    let cfg = |ic_dense, w_ic_dense| {
        Tclr::new(&TemporalContrastConfig {
            sparse_stride: 2,
            ic_dense,
            w_ic_dense,
            w_ll: 0.0,
            w_gl: 0.0,
            ..Default::default()
        })
    };
    let (b, d) = (4, 6);
    let unit = |n| l2_normalize(&Tensor::randn(0f32, 1.0, (n, d), &CPU).unwrap()).unwrap();
    let e = Embeddings {
        sparse: unit(b * VIEWS),
        dense: unit(b * VIEWS * 4),
        gl: None,
    };
    let ic = |c: Tclr| scalar(c.losses(&e, b).unwrap().ic.as_ref().unwrap());
    let off = ic(cfg(IcDense::Off, 1.0));
    let pw = ic(cfg(IcDense::Pairwise, 1.0)) - off;
    let half = ic(cfg(IcDense::Pairwise, 0.5)) - off;
    let multi = ic(cfg(IcDense::MultiPositive, 1.0)) - off;
    assert!((half - 0.5 * pw).abs() < 1e-4, "{half} vs {pw} / 2");
    assert!(
        pw > 5.0 * multi && multi > 0.0,
        "pairwise {pw}, multi {multi}"
    );
    // Recipes written before ic_dense was a choice keep their meaning.
    #[derive(serde::Deserialize)]
    struct M {
        ic_dense: IcDense,
    }
    let parse = |s: &str| toml::from_str::<M>(s).map(|m| m.ic_dense);
    assert_eq!(parse("ic_dense = true").unwrap(), IcDense::MultiPositive);
    assert_eq!(parse("ic_dense = false").unwrap(), IcDense::Off);
    assert_eq!(parse("ic_dense = \"pairwise\"").unwrap(), IcDense::Pairwise);
    let err = parse("ic_dense = \"pairs\"").unwrap_err().to_string();
    assert!(err.contains("multi_positive"), "{err}");
}
