//! Backbones: torchvision's state-dict names and shapes (derived independently from
//! torchvision's Python below), parameter counts against torchvision's published
//! totals, output shapes, TCLR's dilated last stage, and Temporal Group Normalization
//! against BatchNorm3d and a naive f64 reference.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use vssl::backbone::{
    self, Backbone, ConvBuilder, NormSpec, StemKind, VideoResNet, VideoResNetConfig,
};
use vssl::nn::VarStore;
use vssl::ops::batch_norm3d::BatchNorm3d;
use vssl::ops::tgn::{group_bounds, TemporalGroupNorm};
use vssl::recipe::{Arch, BackboneConfig, NormKind, Recipe, RecipeSource};

type Dict = BTreeMap<String, Vec<usize>>;

fn cpu() -> Device {
    Device::Cpu
}

/// Names and shapes of everything a store would save.
fn dict(vs: &VarStore) -> Dict {
    vs.all()
        .into_iter()
        .map(|(k, v)| (k, v.dims().to_vec()))
        .collect()
}

/// Deterministic values in [-1, 1) (64-bit LCG).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn rand_t(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(n, seed), shape, &cpu()).unwrap()
}

use super::common::max_abs_diff as max_diff;

fn cfg(arch: Arch) -> BackboneConfig {
    BackboneConfig {
        arch,
        ..Default::default()
    }
}

fn build(c: &BackboneConfig, frames: usize) -> Box<dyn Backbone> {
    backbone::build(c, &VarStore::new(&cpu(), 7), frames).unwrap()
}

// ---------------------------------------------------------------------------------
// The expected state dicts, written the way torchvision's resnet.py builds them.

fn bn(d: &mut Dict, p: &str, c: usize) {
    for n in ["weight", "bias", "running_mean", "running_var"] {
        d.insert(format!("{p}.{n}"), vec![c]);
    }
    d.insert(format!("{p}.num_batches_tracked"), vec![]);
}

fn conv(d: &mut Dict, p: &str, o: usize, i: usize, k: [usize; 3]) {
    d.insert(format!("{p}.weight"), vec![o, i, k[0], k[1], k[2]]);
}

/// `conv_builder(in, out, midplanes, stride)` at prefix `p`.
fn builder(d: &mut Dict, p: &str, b: ConvBuilder, i: usize, o: usize, mid: usize) {
    match b {
        ConvBuilder::Conv3DSimple => conv(d, p, o, i, [3, 3, 3]),
        ConvBuilder::Conv3DNoTemporal => conv(d, p, o, i, [1, 3, 3]),
        ConvBuilder::Conv2Plus1D => {
            conv(d, &format!("{p}.0"), mid, i, [1, 3, 3]);
            bn(d, &format!("{p}.1"), mid);
            conv(d, &format!("{p}.3"), o, mid, [3, 1, 1]);
        }
    }
}

fn expected_video_resnet(c: &VideoResNetConfig) -> Dict {
    let mut d = Dict::new();
    match c.stem {
        StemKind::Basic => {
            conv(&mut d, "stem.0", c.stem_width, 3, [3, 7, 7]);
            bn(&mut d, "stem.1", c.stem_width);
        }
        StemKind::R2Plus1d => {
            conv(&mut d, "stem.0", 45, 3, [1, 7, 7]);
            bn(&mut d, "stem.1", 45);
            conv(&mut d, "stem.3", c.stem_width, 45, [3, 1, 1]);
            bn(&mut d, "stem.4", c.stem_width);
        }
    }
    let mut inplanes = c.stem_width;
    for s in 0..4 {
        let planes = c.widths[s];
        let stride = if s == 0 { 1 } else { 2 };
        for j in 0..c.layers[s] {
            let p = format!("layer{}.{j}", s + 1);
            let mid = (inplanes * planes * 27) / (inplanes * 9 + 3 * planes);
            builder(
                &mut d,
                &format!("{p}.conv1.0"),
                c.conv_makers[s],
                inplanes,
                planes,
                mid,
            );
            bn(&mut d, &format!("{p}.conv1.1"), planes);
            builder(
                &mut d,
                &format!("{p}.conv2.0"),
                c.conv_makers[s],
                planes,
                planes,
                mid,
            );
            bn(&mut d, &format!("{p}.conv2.1"), planes);
            if j == 0 && (stride != 1 || inplanes != planes) {
                conv(
                    &mut d,
                    &format!("{p}.downsample.0"),
                    planes,
                    inplanes,
                    [1, 1, 1],
                );
                bn(&mut d, &format!("{p}.downsample.1"), planes);
            }
            inplanes = planes;
        }
    }
    if let Some(n) = c.num_classes {
        d.insert("fc.weight".into(), vec![n, 512]);
        d.insert("fc.bias".into(), vec![n]);
    }
    d
}

fn expected_c3d(num_classes: Option<usize>) -> Dict {
    let mut d = Dict::new();
    for (n, i, o) in [
        ("1", 3, 64),
        ("2", 64, 128),
        ("3a", 128, 256),
        ("3b", 256, 256),
        ("4a", 256, 512),
        ("4b", 512, 512),
        ("5a", 512, 512),
        ("5b", 512, 512),
    ] {
        conv(&mut d, &format!("conv{n}"), o, i, [3, 3, 3]);
        d.insert(format!("conv{n}.bias"), vec![o]);
        bn(&mut d, &format!("bn{n}"), o);
    }
    if let Some(n) = num_classes {
        d.insert("linear.weight".into(), vec![n, 512]);
        d.insert("linear.bias".into(), vec![n]);
    }
    d
}

/// Trainable scalars of a dict (everything but running statistics and counters).
fn trainable(d: &Dict) -> usize {
    d.iter()
        .filter(|(k, _)| !k.contains("running_") && !k.ends_with("num_batches_tracked"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// Spot checks copied from torchvision's printed modules / state dicts.
fn assert_has(d: &Dict, entries: &[(&str, &[usize])]) {
    for (name, shape) in entries {
        assert_eq!(
            d.get(*name).map(|s| s.as_slice()),
            Some(*shape),
            "state-dict entry {name}"
        );
    }
}

/// Builds `arch` without and with a 400-class fc; checks names/shapes against the
/// expected dict, entry counts, parameter counts, output shapes on [1,3,8,32,32].
fn check_resnet(
    arch: Arch,
    expect: VideoResNetConfig,
    entries: usize,
    torchvision_total: usize,
    spot: &[(&str, &[usize])],
    out_shape: [usize; 5],
) {
    let net = build(&cfg(arch), 8);
    let got = dict(net.vars());
    assert_eq!(got, expected_video_resnet(&expect), "{arch:?} state dict");
    assert_eq!(got.len(), entries, "{arch:?} state-dict entries");
    assert_has(&got, spot);
    assert!(!got.contains_key("fc.weight"));
    let fc = 512 * 400 + 400;
    assert_eq!(
        net.param_count(),
        torchvision_total - fc,
        "{arch:?} without fc"
    );
    assert_eq!(net.param_count(), trainable(&got));

    let x = rand_t(&[1, 3, 8, 32, 32], 1);
    let y = net.forward_t(&x, false).unwrap();
    assert_eq!(y.dims(), out_shape, "{arch:?} feature map");
    let p = net.pooled(&x, false).unwrap();
    assert_eq!(p.dims(), [1, 512]);
    assert!(net.classify(&p).is_none());
    drop(net);

    let with_fc = build(
        &BackboneConfig {
            num_classes: Some(400),
            ..cfg(arch)
        },
        8,
    );
    let got = dict(with_fc.vars());
    let expect_fc = VideoResNetConfig {
        num_classes: Some(400),
        ..expect
    };
    assert_eq!(got, expected_video_resnet(&expect_fc));
    assert_eq!(got.len(), entries + 2);
    assert_has(&got, &[("fc.weight", &[400, 512]), ("fc.bias", &[400])]);
    assert_eq!(
        with_fc.param_count(),
        torchvision_total,
        "{arch:?} with fc (torchvision)"
    );
    let logits = with_fc.classify(&rand_t(&[2, 512], 2)).unwrap().unwrap();
    assert_eq!(logits.dims(), [2, 400]);
}

#[test]
fn r3d_18_matches_torchvision() {
    check_resnet(
        Arch::R3d18,
        VideoResNetConfig::r3d_18(),
        120,
        33_371_472,
        &[
            ("stem.0.weight", &[64, 3, 3, 7, 7]),
            ("stem.1.running_mean", &[64]),
            ("stem.1.num_batches_tracked", &[]),
            ("layer1.0.conv1.0.weight", &[64, 64, 3, 3, 3]),
            ("layer1.1.conv2.1.bias", &[64]),
            ("layer2.0.conv1.0.weight", &[128, 64, 3, 3, 3]),
            ("layer2.0.downsample.0.weight", &[128, 64, 1, 1, 1]),
            ("layer2.0.downsample.1.running_var", &[128]),
            ("layer3.0.downsample.1.num_batches_tracked", &[]),
            ("layer4.1.conv2.0.weight", &[512, 512, 3, 3, 3]),
            ("layer4.1.conv2.1.weight", &[512]),
        ],
        [1, 512, 1, 2, 2],
    );
}

#[test]
fn mc3_18_matches_torchvision() {
    check_resnet(
        Arch::Mc318,
        VideoResNetConfig::mc3_18(),
        120,
        11_695_440,
        &[
            ("stem.0.weight", &[64, 3, 3, 7, 7]),
            ("layer1.0.conv1.0.weight", &[64, 64, 3, 3, 3]),
            ("layer2.0.conv1.0.weight", &[128, 64, 1, 3, 3]),
            ("layer2.0.downsample.0.weight", &[128, 64, 1, 1, 1]),
            ("layer4.1.conv2.0.weight", &[512, 512, 1, 3, 3]),
            ("layer4.1.conv2.1.num_batches_tracked", &[]),
        ],
        // No temporal stride after the stem: T stays 8.
        [1, 512, 8, 2, 2],
    );
}

#[test]
fn r2plus1d_18_matches_torchvision() {
    check_resnet(
        Arch::R2plus1d18,
        VideoResNetConfig::r2plus1d_18(),
        222,
        31_505_325,
        &[
            ("stem.0.weight", &[45, 3, 1, 7, 7]),
            ("stem.1.running_var", &[45]),
            ("stem.3.weight", &[64, 45, 3, 1, 1]),
            ("stem.4.num_batches_tracked", &[]),
            ("layer1.0.conv1.0.0.weight", &[144, 64, 1, 3, 3]),
            ("layer1.0.conv1.0.1.running_mean", &[144]),
            ("layer1.0.conv1.0.3.weight", &[64, 144, 3, 1, 1]),
            ("layer1.0.conv1.1.weight", &[64]),
            // midplanes from (inplanes, planes) = (64, 128), shared by conv1 and conv2.
            ("layer2.0.conv1.0.0.weight", &[230, 64, 1, 3, 3]),
            ("layer2.0.conv2.0.0.weight", &[230, 128, 1, 3, 3]),
            ("layer2.0.conv2.0.3.weight", &[128, 230, 3, 1, 1]),
            ("layer2.1.conv1.0.0.weight", &[288, 128, 1, 3, 3]),
            ("layer3.0.conv1.0.0.weight", &[460, 128, 1, 3, 3]),
            ("layer4.0.conv1.0.0.weight", &[921, 256, 1, 3, 3]),
            ("layer4.0.conv1.0.3.weight", &[512, 921, 3, 1, 1]),
            ("layer4.0.downsample.0.weight", &[512, 256, 1, 1, 1]),
            ("layer4.1.conv2.0.0.weight", &[1152, 512, 1, 3, 3]),
        ],
        [1, 512, 1, 2, 2],
    );
}

#[test]
fn c3d_matches_vcop() {
    let net = build(&cfg(Arch::C3d), 8);
    let got = dict(net.vars());
    assert_eq!(got, expected_c3d(None));
    assert_eq!(got.len(), 56);
    assert_has(
        &got,
        &[
            ("conv1.weight", &[64, 3, 3, 3, 3]),
            ("conv1.bias", &[64]),
            ("bn1.num_batches_tracked", &[]),
            ("conv3b.weight", &[256, 256, 3, 3, 3]),
            ("bn5b.running_var", &[512]),
        ],
    );
    assert_eq!(net.param_count(), 27_661_440);
    let x = rand_t(&[1, 3, 8, 32, 32], 3);
    assert_eq!(net.forward_t(&x, false).unwrap().dims(), [1, 512, 1, 2, 2]);
    assert_eq!(net.pooled(&x, false).unwrap().dims(), [1, 512]);
    drop(net);

    let net = build(
        &BackboneConfig {
            num_classes: Some(101),
            ..cfg(Arch::C3d)
        },
        8,
    );
    assert_eq!(dict(net.vars()), expected_c3d(Some(101)));
    assert_eq!(net.param_count(), 27_661_440 + 512 * 101 + 101);
    let logits = net.classify(&rand_t(&[3, 512], 4)).unwrap().unwrap();
    assert_eq!(logits.dims(), [3, 101]);
}

#[test]
fn r3d_small_keeps_its_names() {
    let c = BackboneConfig::default();
    let net = build(&c, 8);
    let got = dict(net.vars());
    assert_eq!(
        got,
        expected_video_resnet(&VideoResNetConfig::r3d_small(c.widths, c.layers))
    );
    // stem 6 + 4 blocks x 12 + 3 downsamples x 6
    assert_eq!(got.len(), 72);
    assert_has(
        &got,
        &[
            ("stem.0.weight", &[16, 3, 3, 7, 7]),
            ("layer1.0.conv1.0.weight", &[16, 16, 3, 3, 3]),
            ("layer2.0.downsample.0.weight", &[32, 16, 1, 1, 1]),
            ("layer4.0.conv2.1.running_mean", &[128]),
        ],
    );
    let y = net.forward_t(&rand_t(&[2, 3, 8, 16, 16], 5), true).unwrap();
    assert_eq!(y.dims(), [2, 128, 1, 1, 1]);
}

// ---------------------------------------------------------------------------------
// TCLR's dilated last stage.

#[test]
fn temporal_dilation_last_stage_gives_t4_from_16_frames() {
    let x = rand_t(&[1, 3, 16, 16, 16], 6);
    let plain = build(&cfg(Arch::R3d18), 16);
    assert_eq!(
        plain.forward_t(&x, false).unwrap().dims(),
        [1, 512, 2, 1, 1]
    );
    let plain_dict = dict(plain.vars());
    drop(plain);
    let dilated = build(
        &BackboneConfig {
            temporal_dilation_last_stage: true,
            ..cfg(Arch::R3d18)
        },
        16,
    );
    assert_eq!(
        dilated.forward_t(&x, false).unwrap().dims(),
        [1, 512, 4, 1, 1]
    );
    // No new parameters: TCLR's checkpoints keep torchvision's names and shapes.
    assert_eq!(dict(dilated.vars()), plain_dict);
    drop(dilated);

    // The other builders, narrow: (2+1)D also keeps T' = 4; MC3 has no temporal stride.
    for (makers, stem, plain_t, dilated_t) in [
        ([ConvBuilder::Conv2Plus1D; 4], StemKind::R2Plus1d, 2, 4),
        (
            VideoResNetConfig::mc3_18().conv_makers,
            StemKind::Basic,
            16,
            16,
        ),
    ] {
        for (dilate, t) in [(false, plain_t), (true, dilated_t)] {
            let c = VideoResNetConfig {
                stem,
                conv_makers: makers,
                temporal_dilation_last_stage: dilate,
                ..VideoResNetConfig::r3d_small([8, 8, 16, 16], [1, 1, 1, 1])
            };
            let net = VideoResNet::new(&c, &VarStore::new(&cpu(), 1), 16).unwrap();
            let y = net.forward_t(&x, true).unwrap();
            assert_eq!(y.dims(), [1, 16, t, 1, 1], "{makers:?} dilate={dilate}");
        }
    }
}

// ---------------------------------------------------------------------------------
// Temporal Group Normalization.

#[test]
fn tgn_groups_split_like_tensor_split() {
    assert_eq!(group_bounds(8, 4), vec![(0, 2), (2, 2), (4, 2), (6, 2)]);
    assert_eq!(group_bounds(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
    assert_eq!(
        group_bounds(5, 5),
        vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]
    );
    assert_eq!(group_bounds(6, 1), vec![(0, 6)]);
}

/// Random affine parameters for a store's `weight`/`bias` (and optionally stats).
fn randomise(vs: &VarStore, shape: &[usize], seed: u64, stats: bool) {
    let mut m = BTreeMap::new();
    m.insert(
        "weight".to_string(),
        rand_t(shape, seed).affine(0.5, 1.0).unwrap(),
    );
    m.insert("bias".to_string(), rand_t(shape, seed + 1));
    if stats {
        m.insert("running_mean".to_string(), rand_t(shape, seed + 2));
        m.insert(
            "running_var".to_string(),
            rand_t(shape, seed + 3).affine(0.4, 1.0).unwrap(),
        );
    }
    let r = vs.load(&m).unwrap();
    assert_eq!(r.applied.len(), m.len());
}

#[test]
fn tgn_with_one_group_equals_batch_norm() {
    let (c, shape) = (3, [2, 3, 4, 5, 6]);
    let (vs_bn, vs_tgn) = (VarStore::new(&cpu(), 0), VarStore::new(&cpu(), 0));
    let bnl = BatchNorm3d::new(&vs_bn, c).unwrap();
    let tgn = TemporalGroupNorm::new(&vs_tgn, c, 1).unwrap();
    // Same state dict: names, shapes (a G = 1 TGN loads BatchNorm3d weights).
    assert_eq!(dict(&vs_bn), dict(&vs_tgn));
    randomise(&vs_bn, &[c], 10, false);
    randomise(&vs_tgn, &[c], 10, false);

    let x = Var::from_tensor(&rand_t(&shape, 11).affine(2.0, 0.5).unwrap()).unwrap();
    let r = rand_t(&shape, 12);
    for train in [true, true, false] {
        let yb = bnl.forward_t(x.as_tensor(), train).unwrap();
        let yt = tgn.forward_t(x.as_tensor(), train).unwrap();
        assert!(max_diff(&yb, &yt) <= 1e-5, "forward, train={train}");
        let gb = (yb * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (yt * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, a, b) in [
            ("input", x.as_tensor(), x.as_tensor()),
            ("weight", &bnl.weight, &tgn.weight),
            ("bias", &bnl.bias, &tgn.bias),
        ] {
            let (ga, gbb) = (gb.get(a).unwrap(), gt.get(b).unwrap());
            assert!(max_diff(ga, gbb) <= 1e-5, "{what} gradient, train={train}");
        }
    }
    for (a, b) in [
        (&bnl.running_mean, &tgn.running_mean),
        (&bnl.running_var, &tgn.running_var),
    ] {
        assert!(max_diff(a.as_tensor(), b.as_tensor()) <= 1e-6);
    }
    let nbt = |v: &Var| v.as_tensor().to_scalar::<i64>().unwrap();
    assert_eq!(nbt(&tgn.num_batches_tracked), 2);
    assert_eq!(nbt(&bnl.num_batches_tracked), nbt(&tgn.num_batches_tracked));
}

/// Naive f64 TGN in train mode: (output, batch means [G][C], biased vars [G][C], counts).
#[allow(clippy::type_complexity)]
fn naive_tgn(
    x: &[f32],
    d: [usize; 5],
    groups: usize,
    w: &[f32],
    b: &[f32],
    running: Option<(&[f32], &[f32])>,
) -> (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<usize>) {
    let [n, c, t, h, wd] = d;
    let idx = |ni, ci, ti, hi, wi| (((ni * c + ci) * t + ti) * h + hi) * wd + wi;
    let mut y = vec![0.0; x.len()];
    let (mut means, mut vars, mut counts) = (vec![], vec![], vec![]);
    for (g, (start, len)) in group_bounds(t, groups).into_iter().enumerate() {
        let (mut gm, mut gv) = (vec![], vec![]);
        for ci in 0..c {
            let mut vals = vec![];
            for ni in 0..n {
                for ti in start..start + len {
                    for hi in 0..h {
                        for wi in 0..wd {
                            vals.push(x[idx(ni, ci, ti, hi, wi)] as f64);
                        }
                    }
                }
            }
            let cnt = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / cnt;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cnt;
            let (m_use, v_use) = match running {
                Some((rm, rv)) => (rm[g * c + ci] as f64, rv[g * c + ci] as f64),
                None => (mean, var),
            };
            let (gamma, beta) = (w[g * c + ci] as f64, b[g * c + ci] as f64);
            for ni in 0..n {
                for ti in start..start + len {
                    for hi in 0..h {
                        for wi in 0..wd {
                            let i = idx(ni, ci, ti, hi, wi);
                            y[i] = (x[i] as f64 - m_use) / (v_use + 1e-5).sqrt() * gamma + beta;
                        }
                    }
                }
            }
            gm.push(mean);
            gv.push(var);
            if ci == 0 {
                counts.push(vals.len());
            }
        }
        means.push(gm);
        vars.push(gv);
    }
    (y, means, vars, counts)
}

fn vec_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(a: &[f32], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (*x as f64 - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn tgn_groups_match_naive_reference() {
    // Equal groups (vectorised path) and unequal groups (per-group path).
    for (t, g) in [(8usize, 4usize), (7, 3), (6, 2)] {
        let (c, d) = (3, [2, 3, t, 3, 4]);
        let vs = VarStore::new(&cpu(), 0);
        let tgn = TemporalGroupNorm::new(&vs, c, g).unwrap();
        assert_eq!(tgn.weight.dims(), [g, c]);
        assert_eq!(
            dict(&vs),
            Dict::from([
                ("bias".into(), vec![g, c]),
                ("num_batches_tracked".into(), vec![]),
                ("running_mean".into(), vec![g, c]),
                ("running_var".into(), vec![g, c]),
                ("weight".into(), vec![g, c]),
            ])
        );
        randomise(&vs, &[g, c], 20 + t as u64, true);
        let (w, b) = (vec_f32(&tgn.weight), vec_f32(&tgn.bias));
        let rm0 = vec_f32(tgn.running_mean.as_tensor());
        let rv0 = vec_f32(tgn.running_var.as_tensor());

        // Each time step gets its own offset and scale, so groups have distinct stats.
        let mut xv = rand_vec(d.iter().product(), 30 + t as u64);
        for (i, v) in xv.iter_mut().enumerate() {
            let ti = (i / (d[3] * d[4])) % t;
            *v = *v * (1.0 + ti as f32) + 3.0 * ti as f32;
        }
        let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), &d, &cpu()).unwrap()).unwrap();
        let y = tgn.forward_t(x.as_tensor(), true).unwrap();
        let (y_ref, means, vars, counts) = naive_tgn(&xv, d, g, &w, &b, None);
        assert_close(&vec_f32(&y), &y_ref, 1e-4, "train output");

        // Running statistics: each group updated with its own batch statistics.
        let (mut rm1, mut rv1) = (vec![], vec![]);
        for gi in 0..g {
            for ci in 0..c {
                let n = counts[gi] as f64;
                rm1.push(0.9 * rm0[gi * c + ci] as f64 + 0.1 * means[gi][ci]);
                rv1.push(0.9 * rv0[gi * c + ci] as f64 + 0.1 * vars[gi][ci] * n / (n - 1.0));
            }
        }
        let rm = vec_f32(tgn.running_mean.as_tensor());
        let rv = vec_f32(tgn.running_var.as_tensor());
        assert_close(&rm, &rm1, 1e-5, "running_mean");
        assert_close(&rv, &rv1, 1e-5, "running_var");
        assert!(
            (0..c).all(|ci| rm[ci] != rm[(g - 1) * c + ci]),
            "groups must have separate running means"
        );
        assert_eq!(
            tgn.num_batches_tracked
                .as_tensor()
                .to_scalar::<i64>()
                .unwrap(),
            1
        );

        // Gradients of the affine parameters: dL/dβ_g = Σ r over the group, dL/dγ_g =
        // Σ r·x̂ over the group.
        let r = rand_t(&d, 40);
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let rv_ = vec_f32(&r);
        let (mut gb, mut gw) = (vec![0.0f64; g * c], vec![0.0f64; g * c]);
        let hw = d[3] * d[4];
        for (i, rr) in rv_.iter().enumerate() {
            let ti = (i / hw) % t;
            let ci = (i / (hw * t)) % c;
            let gi = group_bounds(t, g)
                .iter()
                .position(|&(s, l)| ti >= s && ti < s + l)
                .unwrap();
            gb[gi * c + ci] += *rr as f64;
            let xhat = (y_ref[i] - b[gi * c + ci] as f64) / w[gi * c + ci] as f64;
            gw[gi * c + ci] += *rr as f64 * xhat;
        }
        assert_close(
            &vec_f32(grads.get(&tgn.bias).unwrap()),
            &gb,
            1e-4,
            "bias grad",
        );
        assert_close(
            &vec_f32(grads.get(&tgn.weight).unwrap()),
            &gw,
            1e-4,
            "weight grad",
        );
        assert!(grads.get(x.as_tensor()).is_some());

        // Eval: the updated running statistics, per group.
        let ye = tgn.forward_t(x.as_tensor(), false).unwrap();
        let (ye_ref, ..) = naive_tgn(&xv, d, g, &w, &b, Some((&rm, &rv)));
        assert_close(&vec_f32(&ye), &ye_ref, 1e-4, "eval output");
    }
}

#[test]
fn tgn_rejects_fewer_steps_than_groups() {
    let tgn = TemporalGroupNorm::new(&VarStore::new(&cpu(), 0), 2, 4).unwrap();
    let err = tgn
        .forward_t(&rand_t(&[2, 2, 3, 2, 2], 1), true)
        .expect_err("T < G must fail");
    assert!(err.to_string().contains("groups"), "{err}");
}

#[test]
fn tgn_backbone_clamps_groups_to_each_layers_frames() {
    // r3d_small at 8 frames: T is 8 in the stem and layer1, then 4, 2, 1.
    let c = BackboneConfig {
        norm: NormKind::Tgn,
        tgn_groups: [4, 8, 8, 2, 3],
        ..Default::default()
    };
    let vs = VarStore::new(&cpu(), 3);
    let net = backbone::build(&c, &vs, 8).unwrap();
    let d = dict(&vs);
    assert_has(
        &d,
        &[
            ("stem.1.weight", &[4, 16]),
            ("stem.1.num_batches_tracked", &[]),
            ("layer1.0.conv1.1.running_mean", &[8, 16]),
            // layer2's conv1 strides T 8 -> 4: clamped from 8 to 4
            ("layer2.0.conv1.1.weight", &[4, 32]),
            ("layer2.0.downsample.1.running_var", &[4, 32]),
            ("layer3.0.conv2.1.bias", &[2, 64]),
            // T = 1 in layer4: one group, BatchNorm3d shapes
            ("layer4.0.conv1.1.weight", &[128]),
        ],
    );
    let x = rand_t(&[2, 3, 8, 16, 16], 4);
    assert_eq!(net.forward_t(&x, true).unwrap().dims(), [2, 128, 1, 1, 1]);
    assert_eq!(net.forward_t(&x, false).unwrap().dims(), [2, 128, 1, 1, 1]);

    // (2+1)D: the middle norm sees the block's input T, the block norm its output T.
    let rc = VideoResNetConfig {
        stem: StemKind::R2Plus1d,
        conv_makers: [ConvBuilder::Conv2Plus1D; 4],
        norm: NormSpec::tgn([4, 4, 8, 8, 8]),
        ..VideoResNetConfig::r3d_small([8, 8, 8, 8], [1, 1, 1, 1])
    };
    let vs = VarStore::new(&cpu(), 3);
    let net = VideoResNet::new(&rc, &vs, 8).unwrap();
    assert_has(
        &dict(&vs),
        &[
            ("stem.1.weight", &[4, 45]),
            ("stem.4.weight", &[4, 8]),
            // midplanes = 8·8·27 / (8·9 + 3·8) = 18
            ("layer2.0.conv1.0.1.weight", &[8, 18]),
            ("layer2.0.conv1.1.weight", &[4, 8]),
            ("layer2.0.conv2.0.1.weight", &[4, 18]),
        ],
    );
    assert_eq!(net.forward_t(&x, true).unwrap().dims(), [2, 8, 1, 1, 1]);
}

#[test]
fn tgn_single_group_model_loads_bn_weights() {
    let x = rand_t(&[2, 3, 8, 16, 16], 9);
    let bn_vs = VarStore::new(&cpu(), 1);
    let bn_net = backbone::build(&BackboneConfig::default(), &bn_vs, 8).unwrap();
    let tgn_vs = VarStore::new(&cpu(), 2);
    let tgn_cfg = BackboneConfig {
        norm: NormKind::Tgn,
        tgn_groups: [1; 5],
        ..Default::default()
    };
    let tgn_net = backbone::build(&tgn_cfg, &tgn_vs, 8).unwrap();
    assert_eq!(dict(&bn_vs), dict(&tgn_vs));
    // One training step on the BN model, so its statistics are not the defaults.
    bn_net.forward_t(&x, true).unwrap();
    let saved: BTreeMap<String, Tensor> = bn_vs
        .all()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().copy().unwrap()))
        .collect();
    let report = tgn_vs.load(&saved).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report:?}"
    );
    // Eval mode is the same arithmetic. In training the last layer normalises two
    // values per channel: BN's fused CPU kernel centres in f64, TGN's candle ops in
    // f32, and 1/σ amplifies that rounding (ops::batch_norm3d_ill_conditioned_*
    // checks BN against an f64 reference there), so training allows f32 noise.
    for (train, tol) in [(false, 1e-5), (true, 2e-3)] {
        let a = bn_net.forward_t(&x, train).unwrap();
        let b = tgn_net.forward_t(&x, train).unwrap();
        let diff = max_diff(&a, &b);
        assert!(diff <= tol, "train={train}: max diff {diff}");
    }
}

// ---------------------------------------------------------------------------------
// Recipe keys.

fn recipe(dir: &std::path::Path, extra: &str) -> vssl::Result<Recipe> {
    let path = super::common::tiny_recipe(dir, extra);
    vssl::recipe::load(&RecipeSource {
        file: path,
        ..Default::default()
    })
}

fn recipe_err_key(dir: &std::path::Path, extra: &str) -> String {
    match recipe(dir, extra) {
        Err(vssl::Error::Recipe { key, .. }) => key,
        other => panic!("expected a recipe error for {extra:?}, got {other:?}"),
    }
}

#[test]
fn recipe_backbone_keys_and_registry_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(
        dir.path(),
        "[backbone]\narch = \"r2plus1d_18\"\nnorm = \"tgn\"\ntgn_groups = [2, 2, 2, 1, 1]\n\
         temporal_dilation_last_stage = true\nnum_classes = 101\n",
    )
    .unwrap();
    assert_eq!(r.backbone.arch, Arch::R2plus1d18);
    assert_eq!(r.backbone.norm, NormKind::Tgn);
    assert_eq!(r.backbone.tgn_groups, [2, 2, 2, 1, 1]);
    assert!(r.backbone.temporal_dilation_last_stage);
    assert_eq!(r.backbone.num_classes, Some(101));
    let d = BackboneConfig::default();
    assert_eq!((d.tgn_groups, d.num_classes), ([4, 4, 2, 2, 1], None));
    assert!(!d.temporal_dilation_last_stage);

    let bad = [
        (
            "[backbone]\ntgn_groups = [4, 0, 2, 2, 1]\n",
            "backbone.tgn_groups",
        ),
        ("[backbone]\nnum_classes = 0\n", "backbone.num_classes"),
        ("[backbone]\narch = \"c3d\"\n", "data.frames"), // tiny recipe: 4 frames
        (
            "[data]\nframes = 8\n[backbone]\narch = \"c3d\"\ntemporal_dilation_last_stage = true\n",
            "backbone.temporal_dilation_last_stage",
        ),
    ];
    for (extra, key) in bad {
        assert_eq!(recipe_err_key(dir.path(), extra), key, "{extra}");
    }
    assert_eq!(
        recipe(
            dir.path(),
            "[data]\nframes = 8\n[backbone]\narch = \"c3d\"\n"
        )
        .unwrap()
        .backbone
        .arch,
        Arch::C3d
    );

    // Every shipped backbone file resolves over the tiny recipe.
    let repo = super::common::repo();
    for (file, arch) in [
        ("r3d_18", Arch::R3d18),
        ("r3d_18_tclr", Arch::R3d18),
        ("mc3_18", Arch::Mc318),
        ("r2plus1d_18", Arch::R2plus1d18),
        ("r3d_small", Arch::R3dSmall),
        ("c3d", Arch::C3d),
    ] {
        let p = dir.path().join(format!("{file}.toml"));
        std::fs::write(
            &p,
            format!(
                "base = [\"tiny_base.toml\", \"{}/registry/backbones/{file}.toml\"]\n[data]\nframes = 8\n",
                repo.display()
            ),
        )
        .unwrap();
        let r = vssl::recipe::load(&RecipeSource {
            file: p,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(r.backbone.arch, arch, "{file}");
        assert_eq!(
            r.backbone.temporal_dilation_last_stage,
            file == "r3d_18_tclr"
        );
    }
}

#[test]
fn r3d_18_full_size_clip() {
    // The paper-scale clip [1, 3, 16, 112, 112] through torchvision's R3D-18.
    let net = build(&cfg(Arch::R3d18), 16);
    let x = rand_t(&[1, 3, 16, 112, 112], 8);
    let y = net.forward_t(&x, false).unwrap();
    assert_eq!(y.dims(), [1, 512, 2, 7, 7]);
}
