//! SpeedSortPretext: permutation classes are a bijection, sort and per-clip labels
//! follow the signed speeds, the loss matches a hand computation, the loader's clips
//! show the frames their drawn speed and direction say, and training resumes exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use vssl::backbone;
use vssl::data::augment::{MEAN, STD};
use vssl::data::clip::{Batch, ClipMeta};
use vssl::data::datasets::VideoDataset;
use vssl::data::loader::{make_batch, BatchPlan};
use vssl::data::sampler::{clip_indices, StridedPlanner};
use vssl::data::{Split, Video};
use vssl::nn::VarStore;
use vssl::pretext::speed_sort::{
    factorial, per_clip_classes, per_clip_label, permutation_from_index, permutation_index,
    sort_label, sorting_order, speed_sort_plan, SpeedSortPlanner,
};
use vssl::pretext::{
    Pretext, SpeedDraw, SpeedLabel, SpeedSortConfig, SpeedSortMethod, VariableSpeed,
};
use vssl::recipe::{BackboneConfig, NormKind};

use super::common::{
    assert_bit_identical, metric_column, run, stderr, stdout, straight_and_resumed, tensors,
    tiny_recipe_for, vssl,
};

fn m(speed: usize, reverse: bool) -> ClipMeta {
    ClipMeta { speed, reverse }
}

/// All permutations of `0..n`, by recursive insertion.
fn all_perms(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in all_perms(n - 1) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn permutation_index_is_a_bijection() {
    for n in [2usize, 3, 4, 5] {
        let perms = all_perms(n);
        assert_eq!(perms.len(), factorial(n));
        let idx: BTreeSet<u32> = perms.iter().map(|p| permutation_index(p)).collect();
        assert_eq!(
            idx,
            (0..factorial(n) as u32).collect::<BTreeSet<_>>(),
            "n = {n}: every class once"
        );
        for p in &perms {
            assert_eq!(&permutation_from_index(n, permutation_index(p)), p, "{p:?}");
        }
        for k in 0..factorial(n) as u32 {
            assert_eq!(permutation_index(&permutation_from_index(n, k)), k);
        }
        // Lexicographic: identity first, reversal last.
        let id: Vec<usize> = (0..n).collect();
        let rev: Vec<usize> = (0..n).rev().collect();
        assert_eq!(permutation_index(&id), 0);
        assert_eq!(permutation_index(&rev), factorial(n) as u32 - 1);
    }
    // Hand values of the Lehmer code for n = 3: 012 021 102 120 201 210.
    for (k, p) in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(permutation_index(p), k as u32);
    }
}

#[test]
fn sort_label_orders_by_signed_speed() {
    // signed speeds [2, -1, 4]: the backward clip is the slowest.
    let metas = [m(2, false), m(1, true), m(4, false)];
    assert_eq!(sorting_order(&metas), vec![1, 0, 2]);
    assert_eq!(sort_label(&metas), permutation_index(&[1, 0, 2]));
    assert_eq!(sort_label(&metas), 2);
    // All forward, already sorted: class 0; descending: the reversal.
    assert_eq!(sort_label(&[m(1, false), m(2, false), m(8, false)]), 0);
    assert_eq!(sort_label(&[m(8, false), m(2, false), m(1, false)]), 5);
    // Faster backward is more negative: signed [-1, -8, 2] sort as -8 < -1 < 2.
    let metas = [m(1, true), m(8, true), m(2, false)];
    assert_eq!(sorting_order(&metas), vec![1, 0, 2]);
    // Every backward clip sorts below every forward clip, whatever the speeds.
    let metas = [m(1, false), m(8, true), m(4, false), m(2, true)];
    assert_eq!(sorting_order(&metas), vec![1, 3, 0, 2]);
    // Shuffling the clips by a permutation q changes the label to the sort order of the
    // shuffled list: sorting them must give ascending signed speeds every time.
    let base = [m(4, true), m(1, true), m(2, false), m(8, false)];
    for q in all_perms(4) {
        let shuffled: Vec<ClipMeta> = q.iter().map(|&i| base[i]).collect();
        let order = permutation_from_index(4, sort_label(&shuffled));
        let sorted: Vec<i64> = order.iter().map(|&i| shuffled[i].signed_speed()).collect();
        assert_eq!(sorted, vec![-4, -1, 2, 8], "{q:?}");
    }
}

#[test]
fn per_clip_labels_are_distinct_over_speed_and_direction() {
    let speeds = [1usize, 2, 4, 8];
    let mut seen = BTreeSet::new();
    for &s in &speeds {
        for r in [false, true] {
            let l = per_clip_label(&m(s, r), &speeds, true).unwrap();
            assert!(l < per_clip_classes(&speeds, true) as u32);
            assert!(seen.insert(l), "speed {s} reverse {r}: label {l} repeats");
        }
    }
    assert_eq!(seen.len(), 8);
    // Without backward play: one class per speed.
    let fwd: Vec<u32> = speeds
        .iter()
        .map(|&s| per_clip_label(&m(s, false), &speeds, false).unwrap())
        .collect();
    assert_eq!(fwd, vec![0, 1, 2, 3]);
    assert_eq!(per_clip_classes(&speeds, false), 4);
    assert!(per_clip_label(&m(3, false), &speeds, true).is_err());
    assert!(per_clip_label(&m(2, true), &speeds, false).is_err());
}

fn tiny_backbone(norm: NormKind, frames: usize) -> Box<dyn backbone::Backbone> {
    let cfg = BackboneConfig {
        widths: [4, 8, 8, 8],
        norm,
        ..Default::default()
    };
    backbone::build(&cfg, &VarStore::new(&Device::Cpu, 3), frames).unwrap()
}

fn method(label: SpeedLabel, n_clips: usize, speeds: Vec<usize>) -> SpeedSortMethod<VariableSpeed> {
    let cfg = SpeedSortConfig {
        n_clips,
        speeds,
        label,
        pair_hidden: 6,
        ..Default::default()
    };
    let heads = VarStore::new(&Device::Cpu, 9);
    cfg.init(4, tiny_backbone(NormKind::Bn, 4), heads).unwrap()
}

/// Sets every head weight to zero and the final bias to `bias`.
fn set_head(p: &SpeedSortMethod<VariableSpeed>, bias: &[f32]) {
    let mut t = BTreeMap::new();
    for (k, v) in p.head_vars().all() {
        let z = Tensor::zeros(v.dims(), DType::F32, &Device::Cpu).unwrap();
        t.insert(k, z);
    }
    t.insert(
        "fc.bias".to_string(),
        Tensor::new(bias, &Device::Cpu).unwrap(),
    );
    let report = p.head_vars().load(&t).unwrap();
    assert!(report.missing.is_empty() && report.unused.is_empty());
}

fn batch(metas: Vec<ClipMeta>, videos: usize) -> Batch {
    let clips = Tensor::randn(0f32, 1.0, (metas.len(), 3, 4, 16, 16), &Device::Cpu).unwrap();
    Batch {
        clips,
        videos,
        clip_meta: metas,
        seed: 11,
        slice: vssl::data::clip::BatchSlice::whole(videos),
    }
}

fn lse(x: &[f64]) -> f64 {
    x.iter().map(|v| v.exp()).sum::<f64>().ln()
}

#[test]
fn sort_loss_matches_hand_computation() {
    let mut p = method(SpeedLabel::Sort, 3, vec![1, 2, 4, 8]);
    assert_eq!(p.method().playbacks().len(), 8, "4 speeds x 2 directions");
    assert_eq!(p.classes(), 6);
    // Head names: a shared pair layer and the final layer over 3 pairs x 6 hidden units.
    let names: Vec<String> = p.head_vars().all().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        vec!["fc.bias", "fc.weight", "pair.bias", "pair.weight"]
    );
    assert_eq!(
        p.head_vars().all()[1].1.dims(),
        &[6, 18],
        "fc: [n!, n_pairs * pair_hidden]"
    );
    assert_eq!(
        p.head_vars().all()[3].1.dims(),
        &[6, 16],
        "pair: [hidden, 2C]"
    );

    // Zero head: uniform logits, loss ln(3!), whatever the clips.
    set_head(&p, &[0.0; 6]);
    let metas = vec![
        m(2, false),
        m(1, true),
        m(4, false), // video 0: order [1, 0, 2] = class 2
        m(8, false),
        m(4, false),
        m(1, false), // video 1: order [2, 1, 0] = class 5
    ];
    let b = batch(metas.clone(), 2);
    let got = p.step(&b, true).unwrap().loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - 6f64.ln()).abs() < 1e-5, "{got} vs ln 6");

    // Constant logits = bias: loss = mean over videos of lse(bias) - bias[label].
    let bias = [0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0];
    set_head(&p, &bias);
    let out = p.step(&b, true).unwrap();
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    let bf: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
    let want = ((lse(&bf) - bf[2]) + (lse(&bf) - bf[5])) / 2.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // The arg-max class 5 is right for video 1 only.
    let acc = out.scalars.iter().find(|(k, _)| *k == "acc").unwrap().1;
    assert!((acc - 0.5).abs() < 1e-9, "acc {acc}");
    assert_eq!(p.targets(&metas).unwrap(), vec![2, 5]);
    // The loss is the crate's cross-entropy on those targets.
    let logits = Tensor::new(&[bias, bias], &Device::Cpu).unwrap();
    let ce = vssl::loss::cross_entropy(&logits, &Tensor::new(&[2u32, 5], &Device::Cpu).unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((ce - want).abs() < 1e-5);

    // Bad metadata is an error, not a panic.
    let short = batch(metas[..5].to_vec(), 2);
    assert!(p.step(&short, true).is_err());
}

#[test]
fn per_clip_loss_matches_hand_computation() {
    let mut p = method(SpeedLabel::PerClip, 2, vec![1, 3]);
    assert_eq!(p.classes(), 4);
    let names: Vec<String> = p.head_vars().all().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, vec!["fc.bias", "fc.weight"]);
    let bias = [1.0f32, 0.0, -2.0, 0.5];
    set_head(&p, &bias);
    // (speed, dir) classes: (1,fwd)=0 (1,rev)=1 (3,fwd)=2 (3,rev)=3
    let metas = vec![m(3, true), m(1, false), m(1, true), m(3, false)];
    assert_eq!(p.targets(&metas).unwrap(), vec![3, 0, 1, 2]);
    // `playbacks()` lists the playbacks in class order.
    for (k, pb) in p.method().playbacks().iter().enumerate() {
        assert_eq!(per_clip_label(pb, &[1, 3], true).unwrap(), k as u32);
    }
    let out = p.step(&batch(metas, 2), false).unwrap();
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    let bf: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
    let want = [3usize, 0, 1, 2]
        .iter()
        .map(|&c| lse(&bf) - bf[c])
        .sum::<f64>()
        / 4.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn plan_draws_distinct_speeds_and_matching_indices() {
    let spec = VariableSpeed {
        speeds: vec![1, 2, 4, 8],
        n_clips: 3,
        reverse: true,
        distinct: SpeedDraw::Magnitude,
        label: SpeedLabel::Sort,
    };
    let (len, frames) = (40usize, 6usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut orders = BTreeSet::new();
    let (mut back, mut fwd, mut wrapped) = (0, 0, 0);
    for _ in 0..300 {
        let plan = speed_sort_plan(len, frames, &spec, &mut rng);
        assert_eq!(plan.len(), 3);
        let speeds: BTreeSet<usize> = plan.iter().map(|c| c.meta.speed).collect();
        assert_eq!(speeds.len(), 3, "distinct speeds");
        for c in &plan {
            assert!(spec.speeds.contains(&c.meta.speed));
            let mut want = clip_indices(len, frames, c.meta.speed, c.start);
            let span = (frames - 1) * c.meta.speed + 1;
            if span <= len {
                assert!(
                    c.start + span <= len,
                    "a clip that fits lies inside the video"
                );
            } else {
                wrapped += 1;
            }
            if c.meta.reverse {
                want.reverse();
                back += 1;
            } else {
                fwd += 1;
            }
            assert_eq!(c.indices, want);
        }
        orders.insert(sort_label(&plan.iter().map(|c| c.meta).collect::<Vec<_>>()));
    }
    assert_eq!(orders.len(), 6, "every sort class occurs");
    assert!(back > 300 && fwd > 300, "both directions: {back} / {fwd}");
    assert!(wrapped > 0, "speed 8 spans 41 > 40 frames and wraps");
    // Without reverse every clip plays forward.
    let spec = VariableSpeed {
        reverse: false,
        ..spec
    };
    for _ in 0..20 {
        assert!(speed_sort_plan(len, frames, &spec, &mut rng)
            .iter()
            .all(|c| !c.meta.reverse));
    }
}

/// Videos whose frame `t` is a flat image of value `t` (so a clip's pixels reveal its
/// frame indices); labels are the index.
struct Ramp {
    frames: usize,
    size: usize,
}

impl VideoDataset for Ramp {
    fn len(&self, _: Split) -> usize {
        4
    }
    fn label(&self, _: Split, i: usize) -> Option<u32> {
        Some(i as u32)
    }
    fn num_classes(&self) -> usize {
        4
    }
    fn video(&self, _: Split, _: usize) -> vssl::Result<Video> {
        let n = self.size * self.size * 3;
        let data = (0..self.frames)
            .flat_map(|t| std::iter::repeat_n(t as u8, n))
            .collect();
        Ok(Video {
            frames: self.frames,
            height: self.size,
            width: self.size,
            data,
        })
    }
    fn describe(&self) -> String {
        "ramp".into()
    }
}

#[test]
fn loader_clips_follow_drawn_speed_and_direction() {
    let (len, frames, size) = (30usize, 5usize, 8usize);
    let ds = Ramp { frames: len, size };
    let spec = VariableSpeed {
        speeds: vec![1, 2, 4, 8],
        n_clips: 3,
        reverse: true,
        distinct: SpeedDraw::Magnitude,
        label: SpeedLabel::Sort,
    };
    let plan = BatchPlan {
        planner: std::sync::Arc::new(SpeedSortPlanner::new(spec, frames)),
        size,
        batch_size: 4,
        seed: 17,
        augment: Default::default(),
    };
    let (mut back, mut fwd) = (0, 0);
    for step in 0..6 {
        let hb = make_batch(&ds, &plan, step).unwrap();
        assert_eq!(hb.shape, [12, 3, frames, size, size]);
        assert_eq!(hb.clip_meta.len(), 12);
        let clip_len = 3 * frames * size * size;
        for (k, meta) in hb.clip_meta.iter().enumerate() {
            // Frame index of each time step, read back from channel 0.
            let shown: Vec<usize> = (0..frames)
                .map(|t| {
                    let v = hb.data[k * clip_len + t * size * size];
                    ((v * STD[0] + MEAN[0]) * 255.0).round() as usize
                })
                .collect();
            let first = if meta.reverse {
                shown[frames - 1]
            } else {
                shown[0]
            };
            let mut want = clip_indices(len, frames, meta.speed, first);
            if meta.reverse {
                want.reverse();
                back += 1;
            } else {
                fwd += 1;
            }
            assert_eq!(shown, want, "step {step} clip {k} {meta:?}");
            if (frames - 1) * meta.speed < len {
                assert!(first + (frames - 1) * meta.speed < len, "fits: no wrap");
            }
        }
        for v in hb.clip_meta.chunks(3) {
            let s: BTreeSet<usize> = v.iter().map(|c| c.speed).collect();
            assert_eq!(s.len(), 3, "distinct speeds within a video");
        }
        // Counter-based: the same step gives the same batch.
        let again = make_batch(&ds, &plan, step).unwrap();
        assert_eq!(again.data, hb.data);
        assert_eq!(again.clip_meta, hb.clip_meta);
    }
    assert!(back > 0 && fwd > 0);

    // Strided specs record their stride, forward.
    let plan = BatchPlan {
        planner: std::sync::Arc::new(StridedPlanner::new(1, frames, (2, 3))),
        ..plan
    };
    let hb = make_batch(&ds, &plan, 0).unwrap();
    assert_eq!(hb.clip_meta.len(), 4);
    assert!(hb
        .clip_meta
        .iter()
        .all(|c| !c.reverse && (2..=3).contains(&c.speed)));
}

/// A tiny speed-sort recipe (small network, tiny synthetic set) written into `dir`.
fn tiny_speed_recipe(dir: &Path, norm: &str) -> std::path::PathBuf {
    tiny_recipe_for(
        dir,
        "speed_sort",
        "speeds = [1, 2, 3]\npair_hidden = 8",
        &format!("[backbone]\nnorm = \"{norm}\""),
    )
}

#[test]
fn resume_is_bit_identical_bn_and_tgn() {
    for norm in ["bn", "tgn"] {
        let d = tempfile::tempdir().unwrap();
        let r = tiny_speed_recipe(d.path(), norm);
        let (straight, resumed) = straight_and_resumed(d.path(), &r, norm);

        let a = tensors(&straight.join("model.safetensors"));
        let b = tensors(&resumed.join("model.safetensors"));
        for k in ["pretext.pair.weight", "pretext.fc.weight"] {
            assert!(a.contains_key(k), "{norm}: {k} saved");
        }
        assert_bit_identical(&a, &b);
        let col = metric_column;
        assert_eq!(col(&straight, "loss").len(), 6);
        assert_eq!(col(&straight, "loss"), col(&resumed, "loss"), "{norm}");
        assert_eq!(col(&straight, "acc"), col(&resumed, "acc"), "{norm}");
    }
}

#[test]
fn recipe_checks_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_speed_recipe(d.path(), "bn");
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
    // 3 speeds: 6 signed ones, or 3 magnitudes with distinct = "magnitude".
    bad(
        &["method.n_clips=7", "method.label=\"per_clip\""],
        "method.n_clips",
    );
    bad(
        &["method.n_clips=4", "method.distinct=\"magnitude\""],
        "method.n_clips",
    );
    bad(&["method.distinct=\"sign\""], "method.distinct");
    bad(&["method.n_clips=1"], "method.n_clips");
    bad(&["method.speeds=[1, 2, 2]"], "method.speeds");
    bad(&["method.speeds=[0, 1, 2]"], "method.speeds");
    bad(
        &["method.speeds=[1, 2, 3, 4, 5, 6]", "method.n_clips=6"],
        "method.n_clips",
    );
    bad(&["method.label=\"pairs\""], "method.label");
    bad(&["method.stride_max=3"], "method.stride_max");
    bad(&["method.dropout=1.0"], "method.dropout");
    // Six clips are fine per clip (no n! classes), and the resolved recipe round-trips.
    let o = run(&mut vssl(&[
        "recipe",
        r.to_str().unwrap(),
        "--set",
        "method.speeds=[1, 2, 3, 4, 5, 6]",
        "--set",
        "method.n_clips=6",
        "--set",
        "method.label=\"per_clip\"",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("kind = \"speed_sort\"") && text.contains("label = \"per_clip\""));
}

/// The default draw (`distinct = "signed"`) picks distinct signed speeds from
/// `speeds x {forward, reverse}`: a speed can meet its own reverse (1x with -1x), every
/// signed speed and pair of them turns up, and the sort label stays well defined.
/// Without backward play it draws exactly what `"magnitude"` draws.
#[test]
fn signed_draw_lets_a_speed_meet_its_reverse() {
    let spec = |distinct, reverse| VariableSpeed {
        speeds: vec![1, 2, 4],
        n_clips: 3,
        reverse,
        distinct,
        label: SpeedLabel::Sort,
    };
    let signed = spec(SpeedDraw::Signed, true);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut own_reverse, mut seen) = (0, BTreeSet::new());
    let n = 600;
    for _ in 0..n {
        let plan = speed_sort_plan(40, 6, &signed, &mut rng);
        let s: BTreeSet<i64> = plan.iter().map(|c| c.meta.signed_speed()).collect();
        assert_eq!(s.len(), 3, "distinct signed speeds: {plan:?}");
        own_reverse += s.iter().any(|v| *v > 0 && s.contains(&-v)) as usize;
        seen.extend(s);
        let metas: Vec<ClipMeta> = plan.iter().map(|c| c.meta).collect();
        assert!(sort_label(&metas) < 6);
    }
    assert_eq!(seen.len(), 6, "every signed speed drawn: {seen:?}");
    // P(some speed meets its reverse) = 1 - P(3 distinct magnitudes) = 1 - 8/20 = 0.6.
    let share = own_reverse as f64 / n as f64;
    assert!(
        (share - 0.6).abs() < 0.08,
        "share with a speed and its reverse: {share}"
    );
    // The old draw never pairs them.
    let magnitude = spec(SpeedDraw::Magnitude, true);
    for _ in 0..200 {
        let plan = speed_sort_plan(40, 6, &magnitude, &mut rng);
        let s: BTreeSet<usize> = plan.iter().map(|c| c.meta.speed).collect();
        assert_eq!(s.len(), 3);
    }
    // Forward only: both draws consume the rng alike and give the same plans.
    let (mut a, mut b) = (
        rand_chacha::ChaCha8Rng::seed_from_u64(4),
        rand_chacha::ChaCha8Rng::seed_from_u64(4),
    );
    for _ in 0..50 {
        let pa = speed_sort_plan(40, 6, &spec(SpeedDraw::Signed, false), &mut a);
        let pb = speed_sort_plan(40, 6, &spec(SpeedDraw::Magnitude, false), &mut b);
        assert_eq!(pa, pb);
    }
    // With signed speeds 3 clips fit 2 speeds, with magnitudes they do not.
    let cfg = |distinct| SpeedSortConfig {
        speeds: vec![1, 2],
        distinct,
        ..Default::default()
    };
    assert!(cfg(SpeedDraw::Signed).validate().is_ok());
    // ... and the method builds and plans them.
    let four = SpeedSortConfig {
        n_clips: 4,
        speeds: vec![1, 2],
        label: SpeedLabel::PerClip,
        pair_hidden: 6,
        ..Default::default()
    };
    let heads = VarStore::new(&Device::Cpu, 9);
    let m = four.init(4, tiny_backbone(NormKind::Bn, 4), heads).unwrap();
    let plan = m.planner().plan(40, &mut rng).unwrap();
    let s: BTreeSet<i64> = plan.iter().map(|c| c.meta.signed_speed()).collect();
    assert_eq!(s, BTreeSet::from([-2, -1, 1, 2]));
    assert_eq!(
        cfg(SpeedDraw::Magnitude).validate().unwrap_err().0,
        "n_clips"
    );
}

/// `aux_per_clip`: with all head weights zero the sort head gives ln 6 and the auxiliary
/// per-clip head (`pretext.aux`, 8 classes for 4 speeds x 2 directions) ln 8, so the
/// loss is ln 6 + w ln 8; the key is refused with `label = "per_clip"`.
#[test]
fn auxiliary_per_clip_loss_adds_its_weighted_cross_entropy() {
    let cfg = SpeedSortConfig {
        n_clips: 3,
        speeds: vec![1, 2, 4, 8],
        label: SpeedLabel::Sort,
        pair_hidden: 6,
        aux_per_clip: 0.5,
        ..Default::default()
    };
    let heads = VarStore::new(&Device::Cpu, 9);
    let mut p = cfg.init(4, tiny_backbone(NormKind::Bn, 4), heads).unwrap();
    let mut t = BTreeMap::new();
    for (k, v) in p.head_vars().all() {
        t.insert(
            k,
            Tensor::zeros(v.dims(), DType::F32, &Device::Cpu).unwrap(),
        );
    }
    assert!(t.contains_key("aux.weight") && t.contains_key("aux.bias"));
    p.head_vars().load(&t).unwrap();
    let metas = vec![
        m(1, false),
        m(4, true),
        m(2, false),
        m(8, false),
        m(1, true),
        m(2, true),
    ];
    let out = p.step(&batch(metas, 2), false).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
    let want = 6f64.ln() + 0.5 * 8f64.ln();
    assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    assert!(out.scalars.iter().any(|(k, _)| *k == "aux_acc"));
    let bad = SpeedSortConfig {
        label: SpeedLabel::PerClip,
        ..cfg
    };
    assert_eq!(bad.validate().unwrap_err().0, "aux_per_clip");
}
