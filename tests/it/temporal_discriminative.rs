//! TemporalDiscriminative (VTDL): InfoNCE with a queue and a hard negative against
//! hand-computed values, the FIFO memory bank, EMA, the triplet sampler's gap, the TCA
//! derivative property, the method's state, and exact resume (queue and key encoder
//! included).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use vssl::backbone;
use vssl::data::clip::{Batch, ClipMeta, ClipPlanner};
use vssl::data::sampler::circular_distance;
use vssl::loss::{info_nce_queue, info_nce_queue_logits, triplet_margin};
use vssl::nn::{Linear, VarStore};
use vssl::pretext::temporal_discriminative::{
    ema_update, enqueue, random_unit_rows, tca, tca_draw, triplet_starts, TripletPlanner,
    FEATURE_DIM,
};
use vssl::pretext::{
    Pretext, TemporalDiscriminative, TemporalDiscriminativeConfig, TemporalDiscriminativeMethod,
    Vtdl,
};
use vssl::recipe::BackboneConfig;

use super::common::{
    assert_bit_identical, metric_column, run, stderr, straight_and_resumed, tensors,
    tiny_recipe_for, train, vssl,
};

fn t2(rows: &[&[f32]]) -> Tensor {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// `-log softmax(logits)[0]`.
fn nll0(logits: &[f64]) -> f64 {
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    lse - logits[0]
}

#[test]
fn info_nce_with_queue_and_hard_negative_matches_hand_computation() {
    let q = t2(&[&[1.0, 0.0], &[0.0, 1.0]]);
    let k = t2(&[&[0.6, 0.8], &[0.8, 0.6]]);
    let queue = t2(&[&[1.0, 0.0], &[-1.0, 0.0], &[0.0, -1.0]]);
    let n = t2(&[&[0.0, 1.0], &[1.0, 0.0]]);
    // By hand, tau = 0.5: row 0: q.k = 0.6, q.queue = (1, -1, 0), q.n = 0;
    // row 1: q.k = 0.6, q.queue = (0, 0, -1), q.n = 0.
    let want0 = [1.2, 2.0, -2.0, 0.0, 0.0];
    let want1 = [1.2, 0.0, 0.0, -2.0, 0.0];
    let logits = info_nce_queue_logits(&q, &k, &queue, Some(&n), 0.5).unwrap();
    for (got, want) in rows(&logits).iter().zip([want0, want1]) {
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
    let (loss, _) = info_nce_queue(&q, &k, &queue, Some(&n), 0.5).unwrap();
    let want = (nll0(&want0) + nll0(&want1)) / 2.0;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
    // Without the hard negative the last column is gone.
    let (loss, logits) = info_nce_queue(&q, &k, &queue, None, 0.5).unwrap();
    assert_eq!(logits.dims(), &[2, 4]);
    let want = (nll0(&want0[..4]) + nll0(&want1[..4])) / 2.0;
    assert!((loss.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-5);
}

#[test]
fn triplet_margin_matches_hand_computation() {
    let a = t2(&[&[0.0, 0.0], &[0.0, 0.0]]);
    let p = t2(&[&[3.0, 4.0], &[1.0, 0.0]]);
    let n = t2(&[&[1.0, 0.0], &[0.0, 5.0]]);
    // Distances ~ (5, 1) to p and (1, 5) to n; margin 1: max(0, 5 - 1 + 1) = 5 and
    // max(0, 1 - 5 + 1) = 0; mean 2.5 (the 1e-6 epsilon moves it by ~1e-6).
    let got = triplet_margin(&a, &p, &n, 1.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((got - 2.5).abs() < 1e-4, "{got}");
}

#[test]
fn queue_is_fifo_and_wraps() {
    let queue = t2(&[&[0.0], &[1.0], &[2.0], &[3.0]]);
    // Two keys at row 3: the second wraps to row 0.
    let (q, ptr) = enqueue(&queue, 3, &t2(&[&[10.0], &[11.0]])).unwrap();
    assert_eq!(rows(&q), vec![vec![11.0], vec![1.0], vec![2.0], vec![10.0]]);
    assert_eq!(ptr, 1);
    // One key at a time: the oldest entry is always the one overwritten.
    let (mut q, mut ptr) = (queue.clone(), 0);
    for i in 0..6 {
        (q, ptr) = enqueue(&q, ptr, &t2(&[&[100.0 + i as f32]])).unwrap();
    }
    assert_eq!(
        rows(&q),
        vec![vec![104.0], vec![105.0], vec![102.0], vec![103.0]]
    );
    assert_eq!(ptr, 2);
    // More keys than rows: only the newest K remain, each at its FIFO position.
    let keys = t2(&[&[20.0], &[21.0], &[22.0], &[23.0], &[24.0]]);
    let (q, ptr) = enqueue(&queue, 1, &keys).unwrap();
    assert_eq!(
        rows(&q),
        vec![vec![23.0], vec![24.0], vec![21.0], vec![22.0]]
    );
    assert_eq!(ptr, 2);
}

#[test]
fn random_queue_rows_are_unit_and_seeded() {
    let a = random_unit_rows(5, FEATURE_DIM, 7, &Device::Cpu).unwrap();
    let b = random_unit_rows(5, FEATURE_DIM, 7, &Device::Cpu).unwrap();
    let c = random_unit_rows(5, FEATURE_DIM, 8, &Device::Cpu).unwrap();
    assert_eq!(rows(&a), rows(&b));
    assert_ne!(rows(&a), rows(&c));
    for r in rows(&a) {
        let n: f32 = r.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
    }
}

fn linear_store(seed: u64) -> VarStore {
    let vs = VarStore::new(&Device::Cpu, seed);
    Linear::new(&vs.pp("fc"), 3, 2).unwrap();
    vs
}

fn values(vs: &VarStore) -> Vec<Vec<f32>> {
    vs.trainable()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn ema_zero_copies_one_freezes_half_averages() {
    let (src, dst) = (linear_store(1), linear_store(2));
    let (s0, d0) = (values(&src), values(&dst));
    assert_ne!(s0, d0);
    ema_update(&dst, &src, 1.0).unwrap();
    assert_eq!(values(&dst), d0, "m = 1 freezes");
    ema_update(&dst, &src, 0.5).unwrap();
    for (got, (s, d)) in values(&dst).iter().zip(s0.iter().zip(&d0)) {
        for (g, (s, d)) in got.iter().zip(s.iter().zip(d)) {
            assert!((g - 0.5 * (s + d)).abs() < 1e-6);
        }
    }
    ema_update(&dst, &src, 0.0).unwrap();
    assert_eq!(values(&dst), s0, "m = 0 copies");
    assert_eq!(values(&src), s0, "the source is untouched");
}

#[test]
fn triplet_negative_is_never_within_min_gap() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // (video frames, clip frames, stride, min_gap): long videos (clips fit), short ones
    // (indices wrap), and the tightest lengths that still have a negative.
    let cases = [
        (32, 8, 2, 8),
        (32, 8, 4, 8),
        (300, 16, 4, 8),
        (16, 16, 4, 8),
        (17, 16, 1, 8),
        (10, 8, 2, 5),
        (9, 4, 1, 4),
        (5, 4, 3, 1),
    ];
    for (len, frames, stride, gap) in cases {
        let span = (frames - 1) * stride + 1;
        let fits = span <= len && len - span >= gap;
        let spec = TripletPlanner::new(
            Vtdl {
                stride,
                min_gap: gap,
                tca: false,
                tca_max: 0.0,
            },
            frames,
        );
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let (a, n) = triplet_starts(len, frames, stride, gap, &mut rng).unwrap();
            assert!(a < len && n < len);
            let d = circular_distance(a, n, len);
            assert!(d >= gap, "len {len}: anchor {a}, negative {n}, gap {gap}");
            if fits {
                // Both clips lie inside the video, so the plain distance counts too.
                assert!(a + span <= len && n + span <= len);
                assert!(a.abs_diff(n) >= gap);
            }
            seen.insert((n + len - a) % len);
            let clips = spec.plan(len, &mut rng).unwrap();
            assert_eq!(clips.len(), 3);
            assert_eq!(clips[0].indices, clips[1].indices, "anchor = positive");
            assert!(circular_distance(clips[0].start, clips[2].start, len) >= gap);
            for c in &clips {
                assert_eq!(
                    c.meta,
                    ClipMeta {
                        speed: stride,
                        reverse: false
                    }
                );
                assert!(c.indices.iter().all(|&i| i < len));
                let want: Vec<usize> = (0..frames).map(|i| (c.start + i * stride) % len).collect();
                assert_eq!(c.indices, want);
            }
        }
        assert!(
            seen.len() > 1 || len == 2 * gap,
            "len {len}: only distances {seen:?}"
        );
    }
}

#[test]
fn triplet_without_a_valid_negative_is_a_clear_error() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for (len, gap) in [(15, 8), (1, 1), (0, 1)] {
        let e = triplet_starts(len, 16, 4, gap, &mut rng).unwrap_err();
        assert!(e.is_bad_input());
        let msg = e.to_string();
        assert!(msg.contains("method.min_gap"), "{msg}");
        assert!(msg.contains(&format!("{len} frames")), "{msg}");
    }
}

fn naive_tca(
    x: &[f32],
    (n, c, t, hw): (usize, usize, usize, usize),
    l: &[f64],
    r: &[usize],
) -> Vec<f32> {
    let mut out = x.to_vec();
    for i in 0..n {
        for ch in 0..c {
            for f in 0..t {
                for p in 0..hw {
                    let at = |tt: usize| ((i * c + ch) * t + tt) * hw + p;
                    out[at(f)] =
                        ((1.0 - l[i]) * x[at(f)] as f64 + l[i] * x[at(r[i])] as f64) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn tca_scales_every_time_derivative_by_one_minus_l() {
    let (n, c, t, h, w) = (3, 3, 6, 4, 5);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let data: Vec<f32> = (0..n * c * t * h * w)
        .map(|_| rand::Rng::random_range(&mut rng, -2.0f32..2.0))
        .collect();
    let x = Tensor::from_vec(data.clone(), (n, c, t, h, w), &Device::Cpu).unwrap();
    let (l, r) = tca_draw(n, t, 0.1, 5);
    assert!(l.iter().all(|&v| (0.0..0.1).contains(&v)) && r.iter().all(|&f| f < t));
    let y = tca(&x, &l, &r).unwrap();
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = naive_tca(&data, (n, c, t, h * w), &l, &r);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5);
    }
    // First and second time differences: d'(t) = (1 - l) d(t).
    let diff = |v: &Tensor| -> Tensor {
        let m = v.dim(2).unwrap() - 1;
        (v.narrow(2, 1, m).unwrap() - v.narrow(2, 0, m).unwrap()).unwrap()
    };
    for order in 1..=2 {
        let (mut dx, mut dy) = (x.clone(), y.clone());
        for _ in 0..order {
            (dx, dy) = (diff(&dx), diff(&dy));
        }
        for (i, li) in l.iter().enumerate() {
            let a = dx
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = dy
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (a, b) in a.iter().zip(&b) {
                assert!(
                    ((1.0 - li) as f32 * a - b).abs() < 1e-5,
                    "order {order}, clip {i}"
                );
            }
        }
    }
    // l = 0 is the identity; the reference frame itself is left unchanged.
    let same = tca(&x, &[0.0; 3], &[0, 1, 2]).unwrap();
    assert_eq!(same.flatten_all().unwrap().to_vec1::<f32>().unwrap(), data);
    let fr = |v: &Tensor| {
        v.get(1)
            .unwrap()
            .narrow(1, r[1], 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    for (a, b) in fr(&x).iter().zip(fr(&y)) {
        assert!((a - b).abs() < 1e-6);
    }
}

fn tiny_vtdl(cfg: &TemporalDiscriminativeConfig) -> TemporalDiscriminativeMethod<Vtdl> {
    let bcfg = BackboneConfig {
        widths: [4, 4, 8, 8],
        ..Default::default()
    };
    let vs = VarStore::new(&Device::Cpu, 1);
    let net = backbone::build(&bcfg, &vs, 4).unwrap();
    let key = backbone::build(&bcfg, &VarStore::new(&Device::Cpu, 0), 4).unwrap();
    cfg.init(4, net, key, VarStore::new(&Device::Cpu, 2), 9)
        .unwrap()
}

#[test]
fn key_encoder_starts_as_a_copy_and_steps_fill_the_queue() {
    let cfg = TemporalDiscriminativeConfig {
        queue_size: 5,
        momentum: 0.5,
        stride: 1,
        min_gap: 2,
        ..Default::default()
    };
    let mut m = tiny_vtdl(&cfg);
    let x = Tensor::randn(0f32, 1.0, (6, 3, 4, 16, 16), &Device::Cpu).unwrap();
    let (q, k) = (
        m.embed_query(&x, false).unwrap(),
        m.embed_key(&x, false).unwrap(),
    );
    assert_eq!(rows(&q), rows(&k), "key encoder = query encoder at start");
    // The optimizer sees the query encoder and head only.
    let trainable: Vec<String> = m
        .backbone()
        .vars()
        .trainable()
        .into_iter()
        .chain(m.head_vars().trainable())
        .map(|(n, _)| n)
        .collect();
    assert!(trainable.iter().all(|n| !n.starts_with("key")));
    assert_eq!(m.head_vars().trainable().len(), 2, "head fc only");

    let batch = Batch {
        clips: x.clone(),
        videos: 2,
        clip_meta: vec![
            ClipMeta {
                speed: 1,
                reverse: false
            };
            6
        ],
        seed: 4,
        slice: vssl::data::clip::BatchSlice::whole(2),
    };
    let (q0, p0) = (m.queue().0.clone(), m.queue().1);
    assert_eq!(p0, 0);
    let out = m.step(&batch, true).unwrap();
    assert!(out.loss.to_scalar::<f32>().unwrap().is_finite());
    assert_eq!(
        rows(m.queue().0),
        rows(&q0),
        "the queue changes only after the step"
    );
    // Keys of this step = key embeddings of the positives (rows 1 and 4).
    let pos = x
        .index_select(&Tensor::new(&[1u32, 4], &Device::Cpu).unwrap(), 0)
        .unwrap();
    let keys = m.embed_key(&pos, true).unwrap();
    m.after_step().unwrap();
    let (q1, p1) = m.queue();
    assert_eq!(p1, 2);
    let (q1, keys, q0) = (rows(q1), rows(&keys), rows(&q0));
    for i in 0..2 {
        for (a, b) in q1[i].iter().zip(&keys[i]) {
            assert!((a - b).abs() < 1e-6);
        }
    }
    assert_eq!(q1[2..], q0[2..]);
    // The family's triplet: positive = anchor, negative at least min_gap away.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for len in [4, 9, 32] {
        let t = m.method().triplet(len, 4, &mut rng).unwrap();
        assert_eq!(t.anchor, t.positive);
        assert!(circular_distance(t.anchor, t.negative, len) >= 2);
    }
    assert!(m.method().triplet(3, 4, &mut rng).is_err());
    // With the augmentation off the anchor goes through unchanged.
    let off = tiny_vtdl(&TemporalDiscriminativeConfig {
        tca: false,
        ..cfg.clone()
    });
    assert_eq!(
        rows(
            &off.method()
                .augment_anchor(
                    &x,
                    1,
                    vssl::data::clip::BatchSlice::whole(x.dim(0).unwrap())
                )
                .unwrap()
                .flatten_from(1)
                .unwrap()
        ),
        rows(&x.flatten_from(1).unwrap())
    );
    let on = tiny_vtdl(&cfg);
    assert_ne!(
        rows(
            &on.method()
                .augment_anchor(
                    &x,
                    1,
                    vssl::data::clip::BatchSlice::whole(x.dim(0).unwrap())
                )
                .unwrap()
                .flatten_from(1)
                .unwrap()
        ),
        rows(&x.flatten_from(1).unwrap())
    );
}

#[test]
fn state_round_trips_and_rejects_a_different_queue_size() {
    let cfg = TemporalDiscriminativeConfig {
        queue_size: 4,
        ..Default::default()
    };
    let a = tiny_vtdl(&cfg);
    let state: BTreeMap<String, Tensor> = a.state().unwrap().into_iter().collect();
    for k in [
        "queue",
        "queue_ptr",
        "key.head.fc.weight",
        "key.backbone.stem.0.weight",
    ] {
        assert!(state.contains_key(k), "{k} in state");
    }
    assert_eq!(state["queue_ptr"].dtype(), DType::U32);
    let mut b = tiny_vtdl(&TemporalDiscriminativeConfig {
        queue_size: 4,
        ..Default::default()
    });
    b.load_state(&state).unwrap();
    let mut c = tiny_vtdl(&TemporalDiscriminativeConfig {
        queue_size: 5,
        ..Default::default()
    });
    let e = c.load_state(&state).unwrap_err().to_string();
    assert!(e.contains("method.queue_size"), "{e}");
    let mut partial = state.clone();
    partial.remove("key.head.fc.bias");
    let e = b.load_state(&partial).unwrap_err().to_string();
    assert!(e.contains("method.key.head.fc.bias"), "{e}");
}

fn tiny_vtdl_recipe(dir: &std::path::Path, keys: &str) -> std::path::PathBuf {
    tiny_recipe_for(dir, "temporal_discriminative", keys, "")
}

#[test]
fn resume_is_exact_including_queue_and_key_encoder() {
    let d = tempfile::tempdir().unwrap();
    // 2 videos per step, 8 queue rows: the queue wraps within the 6 steps.
    let r = tiny_vtdl_recipe(
        d.path(),
        "stride = 1\nmin_gap = 4\nqueue_size = 8\nmomentum = 0.9\ntemperature = 0.2\ntriplet_weight = 0.5",
    );
    let (straight, resumed) = straight_and_resumed(d.path(), &r, "vtdl");

    let a = tensors(&straight.join("model.safetensors"));
    let b = tensors(&resumed.join("model.safetensors"));
    assert!(a.contains_key("pretext.fc.weight"));
    assert_bit_identical(&a, &b);
    // The final checkpoints: model, optimizer and method state (queue, pointer, key
    // encoder parameters and running statistics) all equal bit for bit.
    let ck = "checkpoints/step-00000006.safetensors";
    let (ca, cb) = (tensors(&straight.join(ck)), tensors(&resumed.join(ck)));
    for k in [
        "method.queue",
        "method.queue_ptr",
        "method.key.backbone.stem.0.weight",
        "method.key.backbone.stem.1.running_mean",
        "method.key.head.fc.weight",
    ] {
        assert!(ca.contains_key(k), "{k} in checkpoint");
    }
    assert_bit_identical(&ca, &cb);
    // 6 steps x 2 keys into 8 rows: the pointer wrapped to 4.
    assert_eq!(ca["method.queue_ptr"].to_vec1::<u32>().unwrap(), vec![4]);
    // The key encoder is an EMA, neither the query encoder nor its initial copy.
    let key = ca["method.key.head.fc.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let query = ca["model.pretext.fc.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(key, query);

    let col = metric_column;
    assert_eq!(col(&straight, "loss").len(), 6);
    for key in ["loss", "acc", "triplet", "sim_pos"] {
        assert_eq!(col(&straight, key), col(&resumed, key), "{key}");
    }
}

#[test]
fn recipe_keys_are_checked_and_short_videos_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_vtdl_recipe(d.path(), "queue_sise = 8");
    let o = run(&mut vssl(&["recipe", r.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("method.queue_sise"), "{}", stderr(&o));
    let r = tiny_vtdl_recipe(d.path(), "temperature = 0.0");
    let o = run(&mut vssl(&["recipe", r.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("method.temperature"), "{}", stderr(&o));
    // 16-frame videos, 4 frames at stride 4 (span 13): no start 9 frames away exists.
    let r = tiny_vtdl_recipe(d.path(), "stride = 4\nmin_gap = 9");
    let o = train(&r, &d.path().join("run"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("method.min_gap"), "{}", stderr(&o));
}
