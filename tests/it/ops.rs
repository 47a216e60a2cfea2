//! vssl::ops against naive nested-loop references (f64), gradients against central
//! finite differences of those references.
//!
//! Losses are `sum(out ⊙ R)` for a fixed random `R`, so the analytic gradient is
//! `opᵀ(R)`. Convolution, average pooling and (locally) max pooling are linear in the
//! perturbed argument, so their f64 finite differences are exact up to rounding; the
//! remaining error is the f32 autograd's (~1e-6 relative). Gradients must agree to
//! `1e-3·(1 + |g|)`: a wrong tap, stride or transpose is off by O(|g|).

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use vssl::nn::VarStore;
use vssl::ops::{
    adaptive_avg_pool3d, avg_pool3d, conv3d, conv3d_generic, global_avg_pool3d, max_pool3d,
    BatchNorm3d, Conv3d, Conv3dConfig,
};

type D5 = [usize; 5];

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

/// Deterministic uniform values in [-1, 1), already rounded to f32 so the f64
/// references see exactly what the f32 ops see.
fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = vssl::seed::mix(s);
            (((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0) as f32 as f64
        })
        .collect()
}

/// Distinct values (a shuffled ramp), so max pooling has no ties.
fn distinct_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut v: Vec<(u64, usize)> = (0..n)
        .map(|i| (vssl::seed::mix(seed ^ (i as u64 * 0x1234_5678)), i))
        .collect();
    v.sort();
    let mut out = vec![0.0; n];
    for (rank, (_, i)) in v.into_iter().enumerate() {
        out[i] = (rank as f64 / n as f64 * 2.0 - 1.0) as f32 as f64;
    }
    out
}

fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

fn tensor(data: &[f64], dims: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(data.to_vec(), dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn var(data: &[f64], dims: &[usize]) -> Var {
    Var::from_tensor(&tensor(data, dims, DType::F32)).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// The same values as a non-contiguous view: stored as `[N, C, T, W, H]`, transposed back.
fn transposed_view(x: &[f64], xd: D5) -> Tensor {
    let [n, c, t, h, w] = xd;
    let mut xs = vec![0.0; x.len()];
    for i in 0..n * c * t {
        for hh in 0..h {
            for ww in 0..w {
                xs[(i * w + ww) * h + hh] = x[(i * h + hh) * w + ww];
            }
        }
    }
    let v = tensor(&xs, &[n, c, t, w, h], DType::F32)
        .transpose(3, 4)
        .unwrap();
    assert!(!v.is_contiguous());
    v
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `sum(out ⊙ r)` as a scalar tensor.
fn weighted_loss(out: &Tensor, r: &[f64]) -> Tensor {
    let r = tensor(r, out.dims(), out.dtype());
    out.mul(&r).unwrap().sum_all().unwrap()
}

/// Up to `count` distinct indices in `0..n` (all of them when n is small).
fn sample_indices(n: usize, count: usize, seed: u64) -> Vec<usize> {
    if n <= count {
        return (0..n).collect();
    }
    let mut idx: Vec<usize> = (0..count)
        .map(|i| (vssl::seed::mix(seed + i as u64) % n as u64) as usize)
        .collect();
    idx.sort();
    idx.dedup();
    idx
}

/// Checks `grad` (autograd) against central differences of `f` at sampled indices of `x`.
fn check_fd(
    what: &str,
    x: &[f64],
    grad: &[f64],
    eps: f64,
    samples: usize,
    f: impl Fn(&[f64]) -> f64,
) {
    assert_eq!(x.len(), grad.len(), "{what}: gradient has the wrong size");
    let mut xp = x.to_vec();
    for i in sample_indices(x.len(), samples, x.len() as u64) {
        xp[i] = x[i] + eps;
        let up = f(&xp);
        xp[i] = x[i] - eps;
        let down = f(&xp);
        xp[i] = x[i];
        let fd = (up - down) / (2.0 * eps);
        assert!(
            (grad[i] - fd).abs() <= 1e-3 * (1.0 + fd.abs()),
            "{what}[{i}]: autograd {} vs finite difference {fd}",
            grad[i]
        );
    }
}

// ---------------------------------------------------------------------------------
// naive references (f64)
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    x: D5,
    o: usize,
    k: [usize; 3],
    cfg: Conv3dConfig,
    bias: bool,
}

impl ConvCase {
    fn w(&self) -> D5 {
        [self.o, self.x[1], self.k[0], self.k[1], self.k[2]]
    }
    fn out(&self) -> D5 {
        let mut d = [self.x[0], self.o, 0, 0, 0];
        for a in 0..3 {
            let c = &self.cfg;
            d[2 + a] = (self.x[2 + a] + 2 * c.padding[a] - c.dilation[a] * (self.k[a] - 1) - 1)
                / c.stride[a]
                + 1;
        }
        d
    }
}

fn conv_case(
    x: D5,
    o: usize,
    k: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    bias: bool,
) -> ConvCase {
    ConvCase {
        x,
        o,
        k,
        cfg: Conv3dConfig {
            stride,
            padding,
            dilation,
        },
        bias,
    }
}

fn conv_cases() -> Vec<ConvCase> {
    vec![
        // 3×3×3, pad 1, odd sizes, batch 2, bias
        conv_case([2, 3, 5, 7, 9], 4, [3, 3, 3], [1; 3], [1; 3], [1; 3], true),
        // non-cubic kernel, mixed strides and paddings, batch 1 (inner-parallel path), no bias
        conv_case(
            [1, 2, 5, 7, 9],
            3,
            [1, 3, 2],
            [2, 1, 2],
            [0, 1, 1],
            [1; 3],
            false,
        ),
        // dilation 2 on T and W, stride 2, batch 3
        conv_case(
            [3, 2, 6, 8, 7],
            2,
            [3, 2, 3],
            [2; 3],
            [1, 0, 2],
            [2, 1, 2],
            true,
        ),
        // pointwise fast path
        conv_case([2, 4, 4, 5, 6], 5, [1; 3], [1; 3], [0; 3], [1; 3], true),
        // 1×1×1 strided shortcut (not pointwise: stride 2)
        conv_case([2, 3, 5, 7, 9], 2, [1; 3], [1, 2, 2], [0; 3], [1; 3], false),
        // kernel covers the whole input
        conv_case([1, 1, 3, 3, 3], 1, [3; 3], [1; 3], [0; 3], [1; 3], true),
        // taps that only read padding (their gradients run on the live taps): a
        // one-frame map under a 3x3x3 kernel with padding 1 (R3D-18's layer 4 at 64 px),
        conv_case([2, 3, 1, 4, 5], 4, [3; 3], [1; 3], [1; 3], [1; 3], false),
        // a strided layer into one frame (one dead tap, the live two off-centre),
        conv_case([2, 3, 2, 5, 4], 3, [3; 3], [2; 3], [1; 3], [1; 3], true),
        // and dead taps on H under dilation 2.
        conv_case(
            [1, 2, 3, 2, 6],
            2,
            [3; 3],
            [1; 3],
            [1, 2, 1],
            [1, 2, 1],
            false,
        ),
        // padding wider than the input on T: some taps read only padding
        conv_case(
            [2, 2, 2, 4, 5],
            2,
            [3; 3],
            [1, 1, 2],
            [2, 1, 2],
            [1; 3],
            true,
        ),
        // mixed strides with dilation and large padding
        conv_case(
            [2, 2, 5, 6, 7],
            3,
            [2, 3, 3],
            [1, 2, 3],
            [1, 2, 1],
            [2, 2, 1],
            false,
        ),
        // large output (2640 positions per sample): several column blocks inside
        // each sample, so the blocked kernels' in-sample path runs
        conv_case([2, 3, 6, 20, 22], 4, [3; 3], [1; 3], [1; 3], [1; 3], false),
        // stride 2, dilation 2, padding 0, odd sizes, more blocks than one
        conv_case([2, 4, 7, 33, 35], 5, [3; 3], [2; 3], [0; 3], [2; 3], true),
        // 16 channels: input-gradient channel groups hold several channels; blocks
        // span samples
        conv_case([3, 16, 3, 9, 11], 6, [3; 3], [1; 3], [1; 3], [1; 3], false),
        // "same" stride-1 shapes (the AVX-512 direct kernel where the CPU has it):
        // output channels not a multiple of its 8-row tile, positions not a multiple
        // of 16, and the (2+1)D factorised kernels
        conv_case([2, 5, 3, 7, 9], 11, [3; 3], [1; 3], [1; 3], [1; 3], true),
        conv_case(
            [3, 4, 2, 5, 6],
            9,
            [1, 3, 3],
            [1; 3],
            [0, 1, 1],
            [1; 3],
            false,
        ),
        conv_case(
            [1, 6, 7, 3, 4],
            8,
            [3, 1, 1],
            [1; 3],
            [1, 0, 0],
            [1; 3],
            false,
        ),
        // "same" with dilation 2 on T and H, and a tile group spanning samples
        conv_case(
            [4, 3, 6, 9, 2],
            5,
            [3, 3, 1],
            [1; 3],
            [2, 2, 0],
            [2, 2, 1],
            true,
        ),
        // 3x3x3 stride 1 for the Winograd kernels (forced in a child run below, and
        // picked by default in `conv3d_winograd_is_picked_exact_and_thread_count_free`):
        // padding 0 with odd sizes, channels not a multiple of its 16-channel vectors,
        // batch 1; mixed padding 0/1/2 (2 is the input gradient of a padding-0 layer)
        conv_case([1, 17, 5, 7, 9], 19, [3; 3], [1; 3], [0; 3], [1; 3], true),
        conv_case(
            [2, 5, 3, 6, 5],
            18,
            [3; 3],
            [1; 3],
            [0, 1, 2],
            [1; 3],
            false,
        ),
        // 1x3x3 stride 1 for the 2D Winograd kernels (MC3-18's layers 2-4): padding 0
        // with odd sizes, batch 1, channels not a multiple of 16; mixed padding 1/2
        conv_case(
            [1, 17, 3, 7, 9],
            19,
            [1, 3, 3],
            [1; 3],
            [0; 3],
            [1; 3],
            true,
        ),
        conv_case(
            [2, 5, 2, 6, 5],
            18,
            [1, 3, 3],
            [1; 3],
            [0, 1, 2],
            [1; 3],
            false,
        ),
        // pointwise (1x1x1, unpadded): stride 1, batch 1; stride (1, 2, 2) with
        // bias; stride 2 on odd sizes (the downsampling shortcuts)
        conv_case([1, 5, 3, 4, 5], 6, [1; 3], [1; 3], [0; 3], [1; 3], false),
        conv_case([2, 6, 5, 7, 9], 7, [1; 3], [1, 2, 2], [0; 3], [1; 3], true),
        conv_case([3, 4, 5, 5, 7], 9, [1; 3], [2; 3], [0; 3], [1; 3], false),
        // kernel taps that only read padding: a one-frame map under a 3x3x3 kernel, a
        // 1x1 map, and a dilated one whose only live temporal tap is the middle one
        conv_case([2, 5, 1, 6, 7], 6, [3; 3], [1; 3], [1; 3], [1; 3], true),
        conv_case([1, 4, 3, 1, 1], 5, [3; 3], [1; 3], [1; 3], [1; 3], false),
        conv_case([1, 3, 3, 5, 5], 4, [3; 3], [1; 3], [1; 3], [2, 1, 1], false),
        // the R3D stem's geometry with an output row of 17 (the direct weight
        // gradient's strided path)
        conv_case(
            [1, 3, 4, 9, 33],
            5,
            [3, 7, 7],
            [1, 2, 2],
            [1, 3, 3],
            [1; 3],
            false,
        ),
    ]
}

fn conv_ref(c: &ConvCase, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let [n, ci, it, ih, iw] = c.x;
    let [_, o, ot, oh, ow] = c.out();
    let [kt, kh, kw] = c.k;
    let (s, p, d) = (c.cfg.stride, c.cfg.padding, c.cfg.dilation);
    let mut y = vec![0.0; numel(&c.out())];
    for nn in 0..n {
        for oo in 0..o {
            for t in 0..ot {
                for h in 0..oh {
                    for wv in 0..ow {
                        let mut acc = b.map_or(0.0, |b| b[oo]);
                        for cc in 0..ci {
                            for a in 0..kt {
                                let ti = (t * s[0] + a * d[0]) as isize - p[0] as isize;
                                if ti < 0 || ti >= it as isize {
                                    continue;
                                }
                                for bb in 0..kh {
                                    let hi = (h * s[1] + bb * d[1]) as isize - p[1] as isize;
                                    if hi < 0 || hi >= ih as isize {
                                        continue;
                                    }
                                    for e in 0..kw {
                                        let wi = (wv * s[2] + e * d[2]) as isize - p[2] as isize;
                                        if wi < 0 || wi >= iw as isize {
                                            continue;
                                        }
                                        let xi = (((nn * ci + cc) * it + ti as usize) * ih
                                            + hi as usize)
                                            * iw
                                            + wi as usize;
                                        let wj = (((oo * ci + cc) * kt + a) * kh + bb) * kw + e;
                                        acc += x[xi] * w[wj];
                                    }
                                }
                            }
                        }
                        y[(((nn * o + oo) * ot + t) * oh + h) * ow + wv] = acc;
                    }
                }
            }
        }
    }
    y
}

#[derive(Clone, Copy, PartialEq)]
enum Pool {
    Max,
    Avg,
}

fn pool_out(x: D5, k: [usize; 3], s: [usize; 3], p: [usize; 3]) -> D5 {
    let mut d = x;
    for a in 0..3 {
        d[2 + a] = (x[2 + a] + 2 * p[a] - k[a]) / s[a] + 1;
    }
    d
}

fn pool_ref(
    kind: Pool,
    x: &[f64],
    xd: D5,
    k: [usize; 3],
    s: [usize; 3],
    p: [usize; 3],
) -> Vec<f64> {
    let od = pool_out(xd, k, s, p);
    let [n, c, it, ih, iw] = xd;
    let [_, _, ot, oh, ow] = od;
    let mut y = Vec::with_capacity(numel(&od));
    for nc in 0..n * c {
        for t in 0..ot {
            for h in 0..oh {
                for w in 0..ow {
                    let mut mx = f64::NEG_INFINITY;
                    let mut sum = 0.0;
                    for a in 0..k[0] {
                        for b in 0..k[1] {
                            for e in 0..k[2] {
                                let ti = (t * s[0] + a) as isize - p[0] as isize;
                                let hi = (h * s[1] + b) as isize - p[1] as isize;
                                let wi = (w * s[2] + e) as isize - p[2] as isize;
                                if ti < 0
                                    || hi < 0
                                    || wi < 0
                                    || ti >= it as isize
                                    || hi >= ih as isize
                                    || wi >= iw as isize
                                {
                                    continue;
                                }
                                let v = x[((nc * it + ti as usize) * ih + hi as usize) * iw
                                    + wi as usize];
                                mx = mx.max(v);
                                sum += v;
                            }
                        }
                    }
                    y.push(match kind {
                        Pool::Max => mx,
                        Pool::Avg => sum / numel(&k) as f64,
                    });
                }
            }
        }
    }
    y
}

fn adaptive_ref(x: &[f64], xd: D5, out: [usize; 3]) -> Vec<f64> {
    let [n, c, it, ih, iw] = xd;
    let win = |i: usize, len: usize, o: usize| (i * len / o, ((i + 1) * len).div_ceil(o));
    let mut y = Vec::new();
    for nc in 0..n * c {
        for t in 0..out[0] {
            let (t0, t1) = win(t, it, out[0]);
            for h in 0..out[1] {
                let (h0, h1) = win(h, ih, out[1]);
                for w in 0..out[2] {
                    let (w0, w1) = win(w, iw, out[2]);
                    let mut sum = 0.0;
                    for ti in t0..t1 {
                        for hi in h0..h1 {
                            for wi in w0..w1 {
                                sum += x[((nc * it + ti) * ih + hi) * iw + wi];
                            }
                        }
                    }
                    y.push(sum / ((t1 - t0) * (h1 - h0) * (w1 - w0)) as f64);
                }
            }
        }
    }
    y
}

/// Per-channel (mean, biased var) over N, T, H, W.
fn bn_stats(x: &[f64], xd: D5) -> (Vec<f64>, Vec<f64>) {
    let [n, c, ..] = xd;
    let l = numel(&xd[2..]);
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals = || {
            (0..n).flat_map(move |nn| x[(nn * c + ch) * l..(nn * c + ch + 1) * l].iter().copied())
        };
        let m = vals().sum::<f64>() / (n * l) as f64;
        mean[ch] = m;
        var[ch] = vals().map(|v| (v - m) * (v - m)).sum::<f64>() / (n * l) as f64;
    }
    (mean, var)
}

fn bn_apply(
    x: &[f64],
    xd: D5,
    mean: &[f64],
    var: &[f64],
    w: &[f64],
    b: &[f64],
    eps: f64,
) -> Vec<f64> {
    let c = xd[1];
    let l = numel(&xd[2..]);
    x.iter()
        .enumerate()
        .map(|(i, v)| {
            let ch = (i / l) % c;
            (v - mean[ch]) / (var[ch] + eps).sqrt() * w[ch] + b[ch]
        })
        .collect()
}

fn bn_train_ref(x: &[f64], xd: D5, w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let (mean, var) = bn_stats(x, xd);
    bn_apply(x, xd, &mean, &var, w, b, eps)
}

// ---------------------------------------------------------------------------------
// conv3d
// ---------------------------------------------------------------------------------

fn conv_data(c: &ConvCase, seed: u64) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let x = rand_vec(numel(&c.x), seed);
    let w = rand_vec(numel(&c.w()), seed + 1);
    let b = c.bias.then(|| rand_vec(c.o, seed + 2));
    (x, w, b)
}

#[test]
fn conv3d_forward_matches_naive_reference() {
    for (i, c) in conv_cases().iter().enumerate() {
        let (x, w, b) = conv_data(c, 10 * i as u64);
        check_conv_forward(i as u64, c, &x, &w, b.as_deref());
    }
}

/// Both conv3d implementations' forward against the naive reference (1e-4).
fn check_conv_forward(i: u64, c: &ConvCase, x: &[f64], w: &[f64], b: Option<&[f64]>) {
    let want = conv_ref(c, x, w, b);
    let xt = tensor(x, &c.x, DType::F32);
    let wt = tensor(w, &c.w(), DType::F32);
    let bt = b.map(|b| tensor(b, &[c.o], DType::F32));
    for (name, y) in [
        ("custom", conv3d(&xt, &wt, bt.as_ref(), &c.cfg).unwrap()),
        (
            "generic",
            conv3d_generic(&xt, &wt, bt.as_ref(), &c.cfg).unwrap(),
        ),
    ] {
        assert_eq!(y.dims(), c.out(), "case {i} {name}: output shape");
        assert_eq!(y.dtype(), DType::F32);
        let diff = max_abs_diff(&values(&y), &want);
        assert!(diff <= 1e-4, "case {i} {c:?} {name}: max abs diff {diff}");
    }
}

#[test]
fn conv3d_f64_and_noncontiguous_inputs() {
    let c = conv_cases()[2];
    let (x, w, b) = conv_data(&c, 77);
    let want = conv_ref(&c, &x, &w, b.as_deref());
    let b = b.unwrap();
    // f64 runs through the same custom op.
    let y = conv3d(
        &tensor(&x, &c.x, DType::F64),
        &tensor(&w, &c.w(), DType::F64),
        Some(&tensor(&b, &[c.o], DType::F64)),
        &c.cfg,
    )
    .unwrap();
    assert_eq!(y.dtype(), DType::F64);
    assert!(max_abs_diff(&values(&y), &want) <= 1e-10);
    // A transposed view of the input and an offset view of the weight.
    let xv = transposed_view(&x, c.x);
    assert!(!xv.is_contiguous());
    let wt = tensor(&w, &c.w(), DType::F32);
    let wv = Tensor::cat(&[&wt, &wt], 0)
        .unwrap()
        .narrow(0, c.o, c.o)
        .unwrap();
    let bt = tensor(&b, &[c.o], DType::F32);
    for y in [
        conv3d(&xv, &wv, Some(&bt), &c.cfg).unwrap(),
        conv3d_generic(&xv, &wv, Some(&bt), &c.cfg).unwrap(),
    ] {
        assert!(max_abs_diff(&values(&y), &want) <= 1e-4);
    }
}

/// Autograd gradients of the custom op (and of the generic path) for x, w and bias.
fn conv_grads(
    c: &ConvCase,
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    r: &[f64],
    generic: bool,
) -> [Vec<f64>; 3] {
    let xv = var(x, &c.x);
    let wv = var(w, &c.w());
    let bv = b.map(|b| var(b, &[c.o]));
    let f = if generic { conv3d_generic } else { conv3d };
    let y = f(
        xv.as_tensor(),
        wv.as_tensor(),
        bv.as_ref().map(|b| b.as_tensor()),
        &c.cfg,
    )
    .unwrap();
    let grads = weighted_loss(&y, r).backward().unwrap();
    let g = |t: &Tensor| values(grads.get(t).expect("missing gradient"));
    [
        g(xv.as_tensor()),
        g(wv.as_tensor()),
        bv.as_ref().map_or(vec![], |b| g(b.as_tensor())),
    ]
}

#[test]
fn conv3d_gradients_match_finite_differences() {
    for (i, c) in conv_cases().iter().enumerate() {
        let (x, w, b) = conv_data(c, 100 + 10 * i as u64);
        let r = rand_vec(numel(&c.out()), 999 + i as u64);
        let [gx, gw, gb] = conv_grads(c, &x, &w, b.as_deref(), &r, false);
        let what = |s: &str| format!("case {i} {s}");
        let bref = b.as_deref();
        check_fd(&what("dx"), &x, &gx, 1e-3, 48, |xp| {
            dot(&conv_ref(c, xp, &w, bref), &r)
        });
        check_fd(&what("dw"), &w, &gw, 1e-3, 48, |wp| {
            dot(&conv_ref(c, &x, wp, bref), &r)
        });
        if let Some(b) = &b {
            check_fd(&what("db"), b, &gb, 1e-3, 48, |bp| {
                dot(&conv_ref(c, &x, &w, Some(bp)), &r)
            });
        }
    }
}

#[test]
fn conv3d_custom_and_generic_gradients_agree() {
    for (i, c) in conv_cases().iter().enumerate() {
        let (x, w, b) = conv_data(c, 300 + 10 * i as u64);
        let r = rand_vec(numel(&c.out()), 5 + i as u64);
        let custom = conv_grads(c, &x, &w, b.as_deref(), &r, false);
        let generic = conv_grads(c, &x, &w, b.as_deref(), &r, true);
        for (name, (a, g)) in ["dx", "dw", "db"].iter().zip(custom.iter().zip(&generic)) {
            let scale = 1.0 + g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(a, g);
            assert!(
                diff <= 1e-5 * scale,
                "case {i} {name}: custom vs generic max abs diff {diff} (scale {scale})"
            );
        }
    }
}

/// Kernels with taps that read only padding: the gradients say they ran trimmed,
/// and the dead taps' weight gradients are exactly zero.
#[test]
fn conv3d_dead_taps_get_zero_weight_gradients_from_the_trimmed_kernel() {
    use vssl::ops::conv3d_cpu_kernels;
    let c = conv_case([2, 3, 1, 4, 5], 4, [3; 3], [1; 3], [1; 3], [1; 3], false);
    let (x, w, _) = conv_data(&c, 77);
    for dtype in [DType::F32, DType::F64] {
        let (xt, wt) = (tensor(&x, &c.x, dtype), tensor(&w, &c.w(), dtype));
        let k = conv3d_cpu_kernels(&xt, &wt, &c.cfg).unwrap();
        assert!(
            !k[0].contains("trimmed") && k[1].ends_with("(trimmed)") && k[2].ends_with("(trimmed)"),
            "{dtype:?}: {k:?}"
        );
    }
    let r = rand_vec(numel(&c.out()), 78);
    let [_, gw, _] = conv_grads(&c, &x, &w, None, &r, false);
    // Weight [O, C, 3, 3, 3]: temporal taps 0 and 2 read frames -1 and 1 only.
    for (i, v) in gw.iter().enumerate() {
        let a = (i % 27) / 9;
        if a != 1 {
            assert_eq!(v.to_bits(), 0f64.to_bits(), "dead tap {i} has gradient {v}");
        }
    }
    assert!(gw.iter().any(|v| *v != 0.0));
}

/// Runs the conv3d reference, finite-difference, generic-agreement and determinism
/// tests again in a child process with `env` set, and checks which kernels ran.
fn conv3d_tests_in_child(env: (&str, &str), expect: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ops::conv3d_forward_matches_naive_reference",
            "ops::conv3d_gradients_match_finite_differences",
            "ops::conv3d_custom_and_generic_gradients_agree",
            "ops::conv3d_is_deterministic_and_skips_untracked_input_grad",
            "ops::conv3d_kernels_follow_the_switches",
            "ops::conv3d_deep_layers_match_reference_and_thread_count_free",
        ])
        .env(env.0, env.1)
        .env("VSSL_EXPECT_CONV_KERNEL", expect)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}={} failed:\n{text}", env.0, env.1);
    assert!(
        text.contains("6 passed"),
        "expected 6 tests to run:\n{text}"
    );
}

/// Layers with 256 channels, where the Winograd kernels (forced in the Winograd
/// child run) transform all tiles first and run one gemm per point: 1x3x3 and
/// 3x3x3, forward against the f64 reference, both gradients against the generic
/// path, all three passes bit-identical with 1 and 2 threads.
#[test]
fn conv3d_deep_layers_match_reference_and_thread_count_free() {
    let cases = [
        conv_case(
            [1, 256, 3, 5, 6],
            256,
            [1, 3, 3],
            [1; 3],
            [0, 1, 1],
            [1; 3],
            false,
        ),
        conv_case(
            [2, 256, 2, 3, 5],
            272,
            [3; 3],
            [1; 3],
            [1; 3],
            [1; 3],
            false,
        ),
    ];
    for (i, c) in cases.iter().enumerate() {
        let (x, w, _) = conv_data(c, 40 + i as u64);
        let (xt, wt) = (tensor(&x, &c.x, DType::F32), tensor(&w, &c.w(), DType::F32));
        let want = conv_ref(c, &x, &w, None);
        let got = values(&conv3d(&xt, &wt, None, &c.cfg).unwrap());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let rel = max_abs_diff(&got, &want) / scale;
        assert!(
            rel <= 1e-5,
            "case {i}: forward error {rel:e} of the output scale"
        );
        let r = rand_vec(numel(&c.out()), 50 + i as u64);
        let generic = conv_grads(c, &x, &w, None, &r, true);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = values(&conv3d(&xt, &wt, None, &c.cfg).unwrap());
                let [gx, gw, _] = conv_grads(c, &x, &w, None, &r, false);
                [y, gx, gw]
            })
        };
        let [y1, gx, gw] = run(1);
        for (name, (a, g)) in ["dx", "dw"]
            .iter()
            .zip([&gx, &gw].into_iter().zip(&generic))
        {
            let scale = 1.0 + g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(a, g);
            assert!(
                diff <= 1e-5 * scale,
                "case {i} {name}: max abs diff {diff} against the generic path (scale {scale})"
            );
        }
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let two = run(2);
        for (name, (a, b)) in ["y", "dx", "dw"]
            .iter()
            .zip([&y1, &gx, &gw].into_iter().zip(&two))
        {
            assert!(
                bits(a) == bits(b),
                "case {i} {name}: 1 and 2 threads differ"
            );
        }
    }
}

/// What a CPU without AVX-512 runs (the blocked vol2col+gemm path): the conv3d tests
/// again with `VSSL_CPU_NO_AVX512=1`.
#[test]
fn conv3d_blocked_path_passes_the_same_tests() {
    if std::env::var_os("VSSL_EXPECT_CONV_KERNEL").is_some() {
        return; // already the child
    }
    conv3d_tests_in_child(("VSSL_CPU_NO_AVX512", "1"), "blocked");
}

/// The Winograd kernels on every 3x3x3 stride-1 case (odd sizes, padding 0/1/2,
/// channels not a multiple of 16, batch 1): the conv3d tests again with
/// `VSSL_CONV_ALGO=winograd`. Without AVX-512 the switch cannot apply and the child
/// checks that the blocked path ran instead.
#[test]
fn conv3d_winograd_path_passes_the_same_tests() {
    if std::env::var_os("VSSL_EXPECT_CONV_KERNEL").is_some() {
        return;
    }
    let expect = if avx512() { "winograd" } else { "blocked" };
    conv3d_tests_in_child(("VSSL_CONV_ALGO", "winograd"), expect);
}

/// Whether the kernels may use AVX-512 here (the CPU has it and it is not hidden).
fn avx512() -> bool {
    if std::env::var("VSSL_CPU_NO_AVX512").is_ok_and(|v| v == "1") {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A 3x3x3 stride-1 "same" convolution without bias.
fn same3(x: D5, o: usize) -> ConvCase {
    conv_case(x, o, [3; 3], [1; 3], [1; 3], [1; 3], false)
}

/// In a child of the two tests above: the kernel reported for a 3x3x3 stride-1
/// layer is the one the switch forces. In the parent: the default choice.
#[test]
fn conv3d_kernels_follow_the_switches() {
    use vssl::ops::conv3d_cpu_kernels;
    let c = same3([2, 32, 4, 12, 12], 32);
    let (x, w, _) = conv_data(&c, 5);
    let (xt, wt) = (tensor(&x, &c.x, DType::F32), tensor(&w, &c.w(), DType::F32));
    let got = conv3d_cpu_kernels(&xt, &wt, &c.cfg).unwrap();
    // A 1x3x3 stride-1 layer (the 2D Winograd kernels).
    let c2 = conv_case(
        [2, 32, 4, 12, 12],
        32,
        [1, 3, 3],
        [1; 3],
        [0, 1, 1],
        [1; 3],
        false,
    );
    let (x2, w2, _) = conv_data(&c2, 7);
    let (xt2, wt2) = (
        tensor(&x2, &c2.x, DType::F32),
        tensor(&w2, &c2.w(), DType::F32),
    );
    let got2 = conv3d_cpu_kernels(&xt2, &wt2, &c2.cfg).unwrap();
    match std::env::var("VSSL_EXPECT_CONV_KERNEL") {
        Ok(want) => {
            assert_eq!(got, [want.as_str(); 3], "kernels under the switch");
            assert_eq!(got2, [want.as_str(); 3], "1x3x3 kernels under the switch");
        }
        // Default: Winograd for this layer (144 tiles >= 2 x 32 channels) on AVX-512.
        Err(_) => {
            let want = if avx512() { "winograd" } else { "blocked" };
            assert_eq!(got, [want; 3], "default kernels");
            // 1x3x3: 288 tiles >= 2 x 32 channels.
            assert_eq!(got2, [want; 3], "default 1x3x3 kernels");
            // A strided layer with 64 input channels and 1024 output positions per
            // sample: vol2col+gemm forward (the direct kernel applies but is slower).
            let cs = conv_case(
                [1, 64, 8, 32, 32],
                16,
                [3; 3],
                [2; 3],
                [1; 3],
                [1; 3],
                false,
            );
            let xs = tensor(&rand_vec(numel(&cs.x), 8), &cs.x, DType::F32);
            let ws = tensor(&rand_vec(numel(&cs.w()), 9), &cs.w(), DType::F32);
            let ks = conv3d_cpu_kernels(&xs, &ws, &cs.cfg).unwrap();
            assert_eq!(ks[0], "blocked", "strided forward took {ks:?}");
            // f64 always takes the blocked path; a one-frame map never Winograd.
            let x64 = tensor(&x, &c.x, DType::F64);
            let w64 = tensor(&w, &c.w(), DType::F64);
            assert_eq!(
                conv3d_cpu_kernels(&x64, &w64, &c.cfg).unwrap(),
                ["blocked"; 3]
            );
            let c1 = same3([2, 32, 1, 12, 12], 32);
            let x1 = tensor(&rand_vec(numel(&c1.x), 6), &c1.x, DType::F32);
            let k1 = conv3d_cpu_kernels(&x1, &wt, &c1.cfg).unwrap();
            assert!(!k1.contains(&"winograd"), "one-frame map took {k1:?}");
        }
    }
}

/// The default Winograd layers: f32 error against the f64 reference on realistic
/// activations (ReLU'd, 64 channels, Kaiming weights) within the documented bound,
/// and bit-identical results with 1 and 2 threads for all three passes.
#[test]
fn conv3d_winograd_is_picked_exact_and_thread_count_free() {
    let k133 = conv_case(
        [2, 64, 4, 12, 13],
        64,
        [1, 3, 3],
        [1; 3],
        [0, 1, 1],
        [1; 3],
        false,
    );
    for c in [same3([2, 64, 4, 12, 13], 64), k133] {
        winograd_exact_and_thread_count_free(&c);
    }
}

fn winograd_exact_and_thread_count_free(c: &ConvCase) {
    use vssl::ops::conv3d_cpu_kernels;
    let c = *c;
    let taps: usize = c.k.iter().product();
    let x: Vec<f64> = rand_vec(numel(&c.x), 21)
        .iter()
        .map(|v| v.max(0.0))
        .collect();
    let std = (2.0f64 / (taps as f64 * 64.0)).sqrt();
    let w: Vec<f64> = rand_vec(numel(&c.w()), 22)
        .iter()
        .map(|v| v * std * 3f64.sqrt())
        .collect();
    let (xt, wt) = (tensor(&x, &c.x, DType::F32), tensor(&w, &c.w(), DType::F32));
    let kernels = conv3d_cpu_kernels(&xt, &wt, &c.cfg).unwrap();
    assert_eq!(kernels, [if avx512() { "winograd" } else { "blocked" }; 3]);
    // Error relative to the largest output: the F(2,3) transforms' coefficients are
    // 0, ±1 and ±1/2, so f32 Winograd stays within a few ulps of the output scale.
    let want = conv_ref(&c, &x, &w, None);
    let got = values(&conv3d(&xt, &wt, None, &c.cfg).unwrap());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let rel = max_abs_diff(&got, &want) / scale;
    eprintln!("conv3d {kernels:?}: max error {rel:e} of the output scale");
    assert!(
        rel <= 2e-6,
        "max error {rel:e} of the output scale (kernels {kernels:?})"
    );
    // Same bits with 1 and 2 threads, forward and both gradients.
    let r = rand_vec(numel(&c.out()), 23);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = values(&conv3d(&xt, &wt, None, &c.cfg).unwrap());
            let [gx, gw, _] = conv_grads(&c, &x, &w, None, &r, false);
            [y, gx, gw].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        })
    };
    let one = run(1);
    assert!(one == run(2), "results differ between 1 and 2 threads");
}

#[test]
fn conv3d_generic_in_batch_chunks_equals_whole_batch() {
    use vssl::ops::conv3d_generic_chunked;
    let c = conv_cases()[0];
    let (x, w, b) = conv_data(&c, 77);
    let r = rand_vec(numel(&c.out()), 78);
    let run = |limit: usize| {
        let xv = var(&x, &c.x);
        let wv = var(&w, &c.w());
        let bt = tensor(b.as_ref().unwrap(), &[c.o], DType::F32);
        let y = conv3d_generic_chunked(xv.as_tensor(), wv.as_tensor(), Some(&bt), &c.cfg, limit)
            .unwrap();
        let grads = weighted_loss(&y, &r).backward().unwrap();
        [
            values(&y),
            values(grads.get(xv.as_tensor()).unwrap()),
            values(grads.get(wv.as_tensor()).unwrap()),
        ]
    };
    // Limit 1: one sample per chunk (batch 2); usize::MAX: the whole batch at once.
    let (chunked, whole) = (run(1), run(usize::MAX));
    for (a, b) in chunked.iter().zip(&whole) {
        assert!(max_abs_diff(a, b) <= 1e-6);
    }
    let want = conv_ref(&c, &x, &w, b.as_deref());
    assert!(max_abs_diff(&chunked[0], &want) <= 1e-4);
}

#[test]
fn conv3d_is_deterministic_and_skips_untracked_input_grad() {
    // Batch 4 (batch-parallel path) and batch 1 (inner-parallel path): two runs must be
    // bit-identical, forward and backward.
    for (n, stride) in [(4, [1, 2, 2]), (1, [1, 2, 2]), (3, [1; 3])] {
        let c = conv_case([n, 3, 4, 6, 6], 4, [3; 3], stride, [1; 3], [1; 3], true);
        let (x, w, b) = conv_data(&c, 42);
        let r = rand_vec(numel(&c.out()), 43);
        let run = || {
            let [gx, gw, gb] = conv_grads(&c, &x, &w, b.as_deref(), &r, false);
            let y = conv3d(
                &tensor(&x, &c.x, DType::F32),
                &tensor(&w, &c.w(), DType::F32),
                None,
                &c.cfg,
            )
            .unwrap();
            [values(&y), gx, gw, gb].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        };
        assert!(run() == run(), "batch {n}: conv3d is not deterministic");
    }
    // A plain (untracked) input gets no gradient; the weight still does.
    let c = conv_cases()[0];
    let (x, w, _) = conv_data(&c, 1);
    let xt = tensor(&x, &c.x, DType::F32);
    let wv = var(&w, &c.w());
    let y = conv3d(&xt, wv.as_tensor(), None, &c.cfg).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&xt).is_none());
    assert_eq!(grads.get(wv.as_tensor()).unwrap().dims(), c.w());
}

#[test]
fn conv3d_layer_creates_named_params() {
    let vs = VarStore::new(&Device::Cpu, 7);
    let cfg = Conv3dConfig {
        stride: [1, 2, 2],
        padding: [1, 2, 2],
        ..Default::default()
    };
    assert_eq!(
        Conv3dConfig::default(),
        Conv3dConfig {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3]
        }
    );
    let conv = Conv3d::new(&vs.pp("stem"), 3, 8, [3, 5, 5], cfg, true).unwrap();
    let names: BTreeMap<String, Vec<usize>> = vs
        .trainable()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().dims().to_vec()))
        .collect();
    assert_eq!(names.get("stem.weight"), Some(&vec![8, 3, 3, 5, 5]));
    assert_eq!(names.get("stem.bias"), Some(&vec![8]));
    assert!(values(conv.bias.as_ref().unwrap())
        .iter()
        .all(|&v| v == 0.0));
    let x = tensor(
        &rand_vec(2 * 3 * 4 * 9 * 9, 3),
        &[2, 3, 4, 9, 9],
        DType::F32,
    );
    let y = conv.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 8, 4, 5, 5]);
    let want = conv3d(&x, &conv.weight, conv.bias.as_ref(), &cfg).unwrap();
    assert_eq!(values(&y), values(&want));
    let no_bias =
        Conv3d::new(&vs.pp("b"), 3, 4, [1, 1, 1], Conv3dConfig::default(), false).unwrap();
    assert!(no_bias.bias.is_none());
    assert!(vs.trainable().iter().all(|(k, _)| k != "b.bias"));
}

#[test]
fn conv3d_rejects_bad_shapes_with_errors() {
    let cfg = Conv3dConfig::default();
    let x = Tensor::zeros((1, 3, 4, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    for f in [conv3d, conv3d_generic] {
        let err = f(&x, &w, None, &cfg).unwrap_err().to_string();
        assert!(
            err.contains("channel mismatch")
                && err.contains("3 channels")
                && err.contains("expects 4"),
            "{err}"
        );
        let err = f(&x.squeeze(0).unwrap(), &w, None, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank 5"), "{err}");
        let w5 = Tensor::zeros((2, 3, 5, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let err = f(&x, &w5, None, &cfg).unwrap_err().to_string();
        assert!(err.contains("smaller than the dilated kernel"), "{err}");
        let w3 = Tensor::zeros((2, 3, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let err = f(&x, &w3, Some(&b), &cfg).unwrap_err().to_string();
        assert!(err.contains("bias must have shape [2]"), "{err}");
        let bad = Conv3dConfig {
            stride: [0, 1, 1],
            ..cfg
        };
        assert!(f(&x, &w3, None, &bad).is_err());
    }
    assert!(max_pool3d(&x, [3, 3, 3], [1; 3], [2, 1, 1])
        .unwrap_err()
        .to_string()
        .contains("at most half"));
    assert!(avg_pool3d(&x, [5, 1, 1], [1; 3], [0; 3]).is_err());
    assert!(adaptive_avg_pool3d(&x, [0, 1, 1]).is_err());
    assert!(global_avg_pool3d(&x.squeeze(0).unwrap()).is_err());
    let vs = VarStore::new(&Device::Cpu, 0);
    let bn = BatchNorm3d::new(&vs, 4).unwrap();
    let err = bn.forward_t(&x, true).unwrap_err().to_string();
    assert!(
        err.contains("3 channels") && err.contains("expects 4"),
        "{err}"
    );
}

#[test]
fn op_shape_failures_are_internal_errors_not_bad_input() {
    // Shapes reaching an op come from vssl's own layers: a mismatch is a bug (exit 1).
    let x = Tensor::zeros((1, 3, 4, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let errs = [
        conv3d(&x, &w, None, &Conv3dConfig::default()).unwrap_err(),
        conv3d_generic(&x, &w, None, &Conv3dConfig::default()).unwrap_err(),
        max_pool3d(&x, [3, 3, 3], [1; 3], [2, 1, 1]).unwrap_err(),
        global_avg_pool3d(&x.squeeze(0).unwrap()).unwrap_err(),
        vssl::ops::fused::add_relu(&x, &x.squeeze(0).unwrap()).unwrap_err(),
        BatchNorm3d::new(&VarStore::new(&Device::Cpu, 0), 4)
            .unwrap()
            .forward_t(&x, true)
            .unwrap_err(),
    ];
    for e in errs {
        assert!(
            matches!(e, vssl::Error::Internal(_)) && !e.is_bad_input(),
            "{e:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// pooling
// ---------------------------------------------------------------------------------

type PoolCase = (D5, [usize; 3], [usize; 3], [usize; 3]);

fn pool_cases() -> Vec<PoolCase> {
    vec![
        ([2, 2, 5, 7, 9], [3; 3], [2; 3], [1; 3]),
        ([1, 3, 5, 7, 9], [1, 3, 2], [1, 2, 2], [0, 1, 1]),
        ([2, 2, 5, 7, 9], [2; 3], [2; 3], [0; 3]),
        ([2, 1, 6, 5, 7], [3, 2, 3], [1, 1, 2], [1, 0, 1]),
        ([1, 2, 4, 8, 8], [1, 3, 3], [1, 2, 2], [0, 1, 1]),
    ]
}

type PoolFn = fn(&Tensor, [usize; 3], [usize; 3], [usize; 3]) -> vssl::Result<Tensor>;

fn pool_fn(kind: Pool) -> PoolFn {
    match kind {
        Pool::Max => max_pool3d,
        Pool::Avg => avg_pool3d,
    }
}

#[test]
fn pool3d_forward_and_gradients_match_naive_reference() {
    for kind in [Pool::Max, Pool::Avg] {
        for (i, &(xd, k, s, p)) in pool_cases().iter().enumerate() {
            let x = distinct_vec(numel(&xd), i as u64);
            let xv = var(&x, &xd);
            let y = pool_fn(kind)(xv.as_tensor(), k, s, p).unwrap();
            let want = pool_ref(kind, &x, xd, k, s, p);
            assert_eq!(y.dims(), pool_out(xd, k, s, p), "case {i}: shape");
            let diff = max_abs_diff(&values(&y), &want);
            assert!(diff <= 1e-4, "case {i}: forward max abs diff {diff}");
            let yv = pool_fn(kind)(&transposed_view(&x, xd), k, s, p).unwrap();
            assert!(
                max_abs_diff(&values(&yv), &want) <= 1e-4,
                "case {i}: non-contiguous input"
            );
            let r = rand_vec(want.len(), 50 + i as u64);
            let g = values(
                weighted_loss(&y, &r)
                    .backward()
                    .unwrap()
                    .get(xv.as_tensor())
                    .unwrap(),
            );
            // Max pooling is linear near distinct values: a tiny step keeps every argmax.
            check_fd(&format!("case {i} dx"), &x, &g, 1e-6, 400, |xp| {
                dot(&pool_ref(kind, xp, xd, k, s, p), &r)
            });
        }
    }
}

#[test]
fn adaptive_and_global_avg_pool_match_naive_reference() {
    let xd = [2, 2, 5, 7, 9];
    let x = rand_vec(numel(&xd), 11);
    for out in [
        [1, 1, 1],
        [2, 3, 4],
        [5, 7, 9],
        [3, 4, 4],
        [4, 7, 3],
        [6, 2, 5],
    ] {
        let xv = var(&x, &xd);
        let y = adaptive_avg_pool3d(xv.as_tensor(), out).unwrap();
        assert_eq!(y.dims(), [2, 2, out[0], out[1], out[2]]);
        let want = adaptive_ref(&x, xd, out);
        let diff = max_abs_diff(&values(&y), &want);
        assert!(diff <= 1e-4, "out {out:?}: forward max abs diff {diff}");
        let yv = adaptive_avg_pool3d(&transposed_view(&x, xd), out).unwrap();
        assert!(
            max_abs_diff(&values(&yv), &want) <= 1e-4,
            "out {out:?}: non-contiguous input"
        );
        let r = rand_vec(want.len(), 3);
        let g = values(
            weighted_loss(&y, &r)
                .backward()
                .unwrap()
                .get(xv.as_tensor())
                .unwrap(),
        );
        check_fd(&format!("out {out:?} dx"), &x, &g, 1e-3, 200, |xp| {
            dot(&adaptive_ref(xp, xd, out), &r)
        });
    }
    let y = global_avg_pool3d(&tensor(&x, &xd, DType::F32)).unwrap();
    assert_eq!(y.dims(), [2, 2]);
    let diff = max_abs_diff(&values(&y), &adaptive_ref(&x, xd, [1, 1, 1]));
    assert!(diff <= 1e-5, "global: {diff}");
}

// ---------------------------------------------------------------------------------
// batch_norm3d
// ---------------------------------------------------------------------------------

fn set_param(vs: &VarStore, name: &str, data: &[f64]) {
    let (_, v) = vs
        .all()
        .into_iter()
        .find(|(k, _)| k == name)
        .expect("param exists");
    v.set(&tensor(data, v.dims(), v.dtype())).unwrap();
}

#[test]
fn batch_norm3d_train_eval_and_running_stats_follow_pytorch() {
    let xd = [3, 4, 3, 5, 6];
    let count = (3 * 3 * 5 * 6) as f64;
    let vs = VarStore::new(&Device::Cpu, 0);
    let bn = BatchNorm3d::new(&vs.pp("bn"), 4).unwrap();
    let mut names: Vec<String> = vs.all().into_iter().map(|(k, _)| k).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn.bias",
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var",
            "bn.weight"
        ]
    );
    assert_eq!((bn.eps, bn.momentum), (1e-5, 0.1));
    let (w, b) = (rand_vec(4, 1), rand_vec(4, 2));
    set_param(&vs, "bn.weight", &w);
    set_param(&vs, "bn.bias", &b);

    let (mut rm, mut rv) = (vec![0.0; 4], vec![1.0; 4]);
    for step in 0..2u64 {
        // Shifted, scaled data so the statistics are far from (0, 1).
        let x: Vec<f64> = rand_vec(numel(&xd), 20 + step)
            .iter()
            .map(|v| (v * 3.0 + 1.5) as f32 as f64)
            .collect();
        let y = bn.forward_t(&tensor(&x, &xd, DType::F32), true).unwrap();
        let diff = max_abs_diff(&values(&y), &bn_train_ref(&x, xd, &w, &b, 1e-5));
        assert!(
            diff <= 1e-4,
            "step {step}: train forward max abs diff {diff}"
        );
        let (mean, var) = bn_stats(&x, xd);
        for ch in 0..4 {
            rm[ch] = 0.9 * rm[ch] + 0.1 * mean[ch];
            rv[ch] = 0.9 * rv[ch] + 0.1 * var[ch] * count / (count - 1.0);
        }
        assert!(
            max_abs_diff(&values(bn.running_mean.as_tensor()), &rm) <= 1e-5,
            "step {step}: running_mean"
        );
        assert!(
            max_abs_diff(&values(bn.running_var.as_tensor()), &rv) <= 1e-5,
            "step {step}: running_var"
        );
        assert_eq!(
            bn.num_batches_tracked
                .as_tensor()
                .to_scalar::<i64>()
                .unwrap(),
            step as i64 + 1
        );
    }
    // Eval uses the running statistics and leaves them alone.
    let x = rand_vec(numel(&xd), 30);
    let y = bn.forward_t(&tensor(&x, &xd, DType::F32), false).unwrap();
    let diff = max_abs_diff(&values(&y), &bn_apply(&x, xd, &rm, &rv, &w, &b, 1e-5));
    assert!(diff <= 1e-4, "eval forward max abs diff {diff}");
    assert!(max_abs_diff(&values(bn.running_mean.as_tensor()), &rm) <= 1e-5);
    assert_eq!(
        bn.num_batches_tracked
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap(),
        2
    );
    // Custom eps and momentum.
    let bn2 = BatchNorm3d::with_options(&vs.pp("bn2"), 4, 1e-3, 0.5).unwrap();
    bn2.forward_t(&tensor(&x, &xd, DType::F32), true).unwrap();
    let (mean, _) = bn_stats(&x, xd);
    let want: Vec<f64> = mean.iter().map(|m| 0.5 * m).collect();
    assert!(max_abs_diff(&values(bn2.running_mean.as_tensor()), &want) <= 1e-5);
}

#[test]
fn batch_norm3d_gradients_match_finite_differences() {
    let xd = [2, 3, 3, 4, 5];
    let vs = VarStore::new(&Device::Cpu, 0);
    let bn = BatchNorm3d::new(&vs, 3).unwrap();
    let (w, b) = (rand_vec(3, 4), rand_vec(3, 5));
    set_param(&vs, "weight", &w);
    set_param(&vs, "bias", &b);
    let x = rand_vec(numel(&xd), 6);
    let r = rand_vec(numel(&xd), 7);
    for train in [true, false] {
        let xv = var(&x, &xd);
        let y = bn.forward_t(xv.as_tensor(), train).unwrap();
        let grads = weighted_loss(&y, &r).backward().unwrap();
        let g = |t: &Tensor| values(grads.get(t).expect("missing gradient"));
        let (gx, gw, gb) = (g(xv.as_tensor()), g(&bn.weight), g(&bn.bias));
        // Running stats are buffers: they must not receive gradients.
        assert!(
            grads.get(bn.running_mean.as_tensor()).is_none()
                && grads.get(bn.running_var.as_tensor()).is_none()
        );
        let (rm, rv) = (
            values(bn.running_mean.as_tensor()),
            values(bn.running_var.as_tensor()),
        );
        let f = |x: &[f64], w: &[f64], b: &[f64]| {
            let y = if train {
                bn_train_ref(x, xd, w, b, 1e-5)
            } else {
                bn_apply(x, xd, &rm, &rv, w, b, 1e-5)
            };
            dot(&y, &r)
        };
        check_fd(&format!("train={train} dx"), &x, &gx, 1e-4, 120, |xp| {
            f(xp, &w, &b)
        });
        check_fd(&format!("train={train} dweight"), &w, &gw, 1e-4, 3, |wp| {
            f(&x, wp, &b)
        });
        check_fd(&format!("train={train} dbias"), &b, &gb, 1e-4, 3, |bp| {
            f(&x, &w, bp)
        });
    }
}

#[test]
fn batch_norm3d_relu_fused_matches_reference_and_finite_differences() {
    let xd = [3, 4, 2, 5, 3];
    let vs = VarStore::new(&Device::Cpu, 0);
    let bn = BatchNorm3d::new(&vs, 4).unwrap();
    let (w, b) = (rand_vec(4, 14), rand_vec(4, 15));
    set_param(&vs, "weight", &w);
    set_param(&vs, "bias", &b);
    let x = rand_vec(numel(&xd), 16);
    let r = rand_vec(numel(&xd), 17);
    let relu_ref = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
        bn_train_ref(x, xd, w, b, 1e-5)
            .iter()
            .map(|v| v.max(0.0))
            .collect()
    };
    let xv = var(&x, &xd);
    let y = bn.forward_act(xv.as_tensor(), true, true).unwrap();
    let diff = max_abs_diff(&values(&y), &relu_ref(&x, &w, &b));
    assert!(diff <= 1e-5, "bn+relu forward off by {diff}");
    let grads = weighted_loss(&y, &r).backward().unwrap();
    let g = |t: &Tensor| values(grads.get(t).expect("missing gradient"));
    let (gx, gw, gb) = (g(xv.as_tensor()), g(&bn.weight), g(&bn.bias));
    let f = |x: &[f64], w: &[f64], b: &[f64]| dot(&relu_ref(x, w, b), &r);
    check_fd("bn+relu dx", &x, &gx, 1e-4, 120, |xp| f(xp, &w, &b));
    check_fd("bn+relu dweight", &w, &gw, 1e-4, 4, |wp| f(&x, wp, &b));
    check_fd("bn+relu dbias", &b, &gb, 1e-4, 4, |bp| f(&x, &w, bp));
}

#[test]
fn batch_norm3d_ill_conditioned_batch_stays_accurate() {
    // Two values per channel far from zero and close together (the last layer of a
    // small network on a tiny clip): the centred value must not lose the mean's
    // rounding, or 1/σ amplifies it.
    let xd = [2, 3, 1, 1, 1];
    let x: Vec<f64> = rand_vec(6, 3)
        .iter()
        .map(|v| (10.0 + 2e-3 * v) as f32 as f64)
        .collect();
    let vs = VarStore::new(&Device::Cpu, 0);
    let bn = BatchNorm3d::new(&vs, 3).unwrap();
    let y = bn.forward_t(&tensor(&x, &xd, DType::F32), true).unwrap();
    let want = bn_train_ref(&x, xd, &[1.0; 3], &[0.0; 3], 1e-5);
    let diff = max_abs_diff(&values(&y), &want);
    assert!(diff <= 1e-5, "ill-conditioned batch norm off by {diff}");
}

#[test]
fn add_relu_matches_candle_ops_and_gradients() {
    use vssl::ops::fused::add_relu;
    let d = [2, 3, 4, 5, 7];
    let (a, b) = (rand_vec(numel(&d), 30), rand_vec(numel(&d), 31));
    let r = rand_vec(numel(&d), 32);
    let (av, bv) = (var(&a, &d), var(&b, &d));
    let y = add_relu(av.as_tensor(), bv.as_tensor()).unwrap();
    let want: Vec<f64> = a.iter().zip(&b).map(|(a, b)| (a + b).max(0.0)).collect();
    assert!(max_abs_diff(&values(&y), &want) <= 1e-6);
    let grads = weighted_loss(&y, &r).backward().unwrap();
    // d/da = d/db = r where a + b > 0, else 0.
    let mask: Vec<f64> = want
        .iter()
        .zip(&r)
        .map(|(y, r)| if *y > 0.0 { *r } else { 0.0 })
        .collect();
    for v in [&av, &bv] {
        let g = values(grads.get(v.as_tensor()).unwrap());
        assert!(max_abs_diff(&g, &mask) <= 1e-6);
    }
    assert!(add_relu(av.as_tensor(), &bv.as_tensor().narrow(4, 0, 3).unwrap()).is_err());
}

// ---------------------------------------------------------------------------------
// speed (manual): cargo test --release --test it ops::conv3d_speed -- --ignored --nocapture
// ---------------------------------------------------------------------------------

#[test]
#[ignore]
fn conv3d_speed() {
    let xv = var(&rand_vec(8 * 64 * 8 * 28 * 28, 1), &[8, 64, 8, 28, 28]);
    let wv = var(&rand_vec(64 * 64 * 27, 2), &[64, 64, 3, 3, 3]);
    let cfg = Conv3dConfig {
        padding: [1; 3],
        ..Default::default()
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for rep in 0..3 {
        let t = Instant::now();
        let y = conv3d(xv.as_tensor(), wv.as_tensor(), None, &cfg).unwrap();
        let fwd = ms(t);
        let t = Instant::now();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(xv.as_tensor()).is_some());
        let bwd = ms(t);
        // Weight gradient alone: the input is a plain tensor.
        let y = conv3d(&xv.as_tensor().detach(), wv.as_tensor(), None, &cfg).unwrap();
        let t = Instant::now();
        y.sum_all().unwrap().backward().unwrap();
        let bwd_w = ms(t);
        println!(
            "rep {rep}: conv3d [8,64,8,28,28] -> 64, k3 p1: forward {fwd:.0} ms, backward {bwd:.0} ms (weight grad alone {bwd_w:.0} ms)"
        );
    }
}

/// A random valid convolution geometry (every output dimension at least 1).
fn random_conv_case(rng: &mut impl rand::Rng) -> ConvCase {
    loop {
        let mut r = |lo: usize, hi: usize| rng.random_range(lo..=hi);
        let x = [r(1, 3), r(1, 5), r(1, 7), r(1, 9), r(1, 9)];
        let (o, k) = (r(1, 5), [r(1, 3), r(1, 3), r(1, 3)]);
        let stride = [r(1, 3), r(1, 3), r(1, 3)];
        let dilation = [r(1, 2), r(1, 2), r(1, 2)];
        let padding = [r(0, 2), r(0, 2), r(0, 2)];
        let c = conv_case(x, o, k, stride, padding, dilation, r(0, 1) == 1);
        let fits = (0..3).all(|a| x[2 + a] + 2 * padding[a] > dilation[a] * (k[a] - 1));
        if fits {
            return c;
        }
    }
}

#[test]
fn conv3d_matches_the_naive_reference_on_random_geometries() {
    // Property test over 60 random geometries (fixed seed; the message names the case):
    // both implementations' forward against the naive reference, and their input,
    // weight and bias gradients against finite differences of it.
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for i in 0..60u64 {
        let c = random_conv_case(&mut rng);
        let (x, w, b) = conv_data(&c, 5000 + 10 * i);
        check_conv_forward(i, &c, &x, &w, b.as_deref());
        let r = rand_vec(numel(&c.out()), 7000 + i);
        let bref = b.as_deref();
        for generic in [false, true] {
            let [gx, gw, gb] = conv_grads(&c, &x, &w, bref, &r, generic);
            let what = |s: &str| format!("case {i} {c:?} generic={generic} {s}");
            check_fd(&what("dx"), &x, &gx, 1e-3, 16, |xp| {
                dot(&conv_ref(&c, xp, &w, bref), &r)
            });
            check_fd(&what("dw"), &w, &gw, 1e-3, 16, |wp| {
                dot(&conv_ref(&c, &x, wp, bref), &r)
            });
            if let Some(b) = &b {
                check_fd(&what("db"), b, &gb, 1e-3, 8, |bp| {
                    dot(&conv_ref(&c, &x, &w, Some(bp)), &r)
                });
            }
        }
    }
}

/// `grad_sink::backward` (the trainer's backward, where conv3d hands a variable
/// weight's gradient past candle's zero-fill + add) gives the same gradients as
/// candle's `backward`: bit for bit for a weight used once and for a derived
/// (non-variable) weight whose gradient must flow on to its variable; within rounding
/// for one used by two convolutions and by a plain candle op as well (its three parts
/// may be summed in another order). Plain `backward` afterwards still finds the
/// weight gradients (the sink is off outside).
#[test]
fn conv3d_grad_sink_gives_the_same_gradients_as_candle_backward() {
    use vssl::ops::grad_sink;
    let c = same3([2, 3, 4, 6, 6], 3);
    let (x, w, _) = conv_data(&c, 91);
    let x = tensor(&x, &c.x, DType::F32);
    let w1 = Var::from_tensor(&tensor(&w, &c.w(), DType::F32)).unwrap();
    let w2 = Var::from_tensor(&tensor(&rand_vec(w.len(), 92), &c.w(), DType::F32)).unwrap();
    let w3 = Var::from_tensor(&tensor(&rand_vec(w.len(), 93), &c.w(), DType::F32)).unwrap();
    let loss = || {
        // w1 once; w2 twice and in a candle op; w3 through a scale (not a variable).
        let y1 = conv3d(&x, w1.as_tensor(), None, &c.cfg).unwrap();
        let y2 = conv3d(&y1, w2.as_tensor(), None, &c.cfg).unwrap();
        let y3 = conv3d(&y2, w2.as_tensor(), None, &c.cfg).unwrap();
        let w3s = (w3.as_tensor() * 0.5).unwrap();
        let y4 = conv3d(&y3, &w3s, None, &c.cfg).unwrap();
        let reg = w2.as_tensor().sqr().unwrap().sum_all().unwrap();
        (y4.sqr().unwrap().sum_all().unwrap() + reg).unwrap()
    };
    let plain = loss().backward().unwrap();
    let sunk = grad_sink::backward(&loss()).unwrap();
    let again = loss().backward().unwrap();
    let bits = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    for (name, v) in [("w1", &w1), ("w2", &w2), ("w3", &w3)] {
        let want = bits(plain.get(v.as_tensor()).expect("plain gradient"));
        let got = bits(sunk.get(v.as_tensor()).expect("sunk gradient"));
        if name == "w2" {
            let f = |b: &[u32]| {
                b.iter()
                    .map(|&u| f32::from_bits(u) as f64)
                    .collect::<Vec<_>>()
            };
            let (a, b) = (f(&want), f(&got));
            let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(&a, &b);
            assert!(
                diff <= 1e-6 * scale,
                "w2: the trainer's backward differs by {diff}"
            );
        } else {
            assert!(want == got, "{name}: the trainer's backward differs");
        }
        let after = bits(again.get(v.as_tensor()).expect("gradient after the sink"));
        assert!(
            want == after,
            "{name}: plain backward changed after the sink"
        );
        assert!(want.iter().any(|&b| b != 0), "{name}: gradient is all zero");
    }
}

/// TGN in training mode: each temporal group batch-normalised with its own
/// statistics (the f64 reference applies [`bn_train_ref`] to each group's frames).
fn tgn_train_ref(x: &[f64], xd: D5, groups: usize, w: &[f64], b: &[f64]) -> Vec<f64> {
    let [n, c, t, h, wd] = xd;
    let idx = |ni: usize, ci: usize, ti: usize, p: usize| ((ni * c + ci) * t + ti) * h * wd + p;
    let mut y = vec![0.0; x.len()];
    for (g, (start, len)) in vssl::ops::tgn::group_bounds(t, groups)
        .into_iter()
        .enumerate()
    {
        let sd = [n, c, len, h, wd];
        let mut sub = Vec::with_capacity(numel(&sd));
        for ni in 0..n {
            for ci in 0..c {
                for ti in start..start + len {
                    sub.extend((0..h * wd).map(|p| x[idx(ni, ci, ti, p)]));
                }
            }
        }
        let ys = bn_train_ref(
            &sub,
            sd,
            &w[g * c..(g + 1) * c],
            &b[g * c..(g + 1) * c],
            1e-5,
        );
        let mut k = 0;
        for ni in 0..n {
            for ci in 0..c {
                for ti in start..start + len {
                    for p in 0..h * wd {
                        y[idx(ni, ci, ti, p)] = ys[k];
                        k += 1;
                    }
                }
            }
        }
    }
    y
}

/// TGN's input, scale and shift gradients in training mode (equal groups, the
/// vectorised path; unequal groups, the per-group path) against finite differences
/// of the f64 reference. TGN has one form, composed of candle ops, on every device.
#[test]
fn tgn_gradients_match_finite_differences() {
    for (t, groups) in [(4usize, 2usize), (5, 2), (3, 3)] {
        let xd = [2, 3, t, 3, 2];
        let vs = VarStore::new(&Device::Cpu, 0);
        let tgn = vssl::ops::tgn::TemporalGroupNorm::new(&vs, 3, groups).unwrap();
        let (w, b) = (rand_vec(3 * groups, 14), rand_vec(3 * groups, 15));
        set_param(&vs, "weight", &w);
        set_param(&vs, "bias", &b);
        let x = rand_vec(numel(&xd), 16);
        let r = rand_vec(numel(&xd), 17);
        let xv = var(&x, &xd);
        let y = tgn.forward_t(xv.as_tensor(), true).unwrap();
        let ref_y = tgn_train_ref(&x, xd, groups, &w, &b);
        let got = values(&y);
        let worst = got
            .iter()
            .zip(&ref_y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "T={t}, G={groups}: forward off by {worst}");
        let grads = weighted_loss(&y, &r).backward().unwrap();
        let g = |t: &Tensor| values(grads.get(t).expect("missing gradient"));
        let (gx, gw, gb) = (g(xv.as_tensor()), g(&tgn.weight), g(&tgn.bias));
        let f = |x: &[f64], w: &[f64], b: &[f64]| dot(&tgn_train_ref(x, xd, groups, w, b), &r);
        let what = format!("T={t}, G={groups}");
        check_fd(&format!("{what} dx"), &x, &gx, 1e-4, 80, |xp| f(xp, &w, &b));
        check_fd(&format!("{what} dweight"), &w, &gw, 1e-4, 9, |wp| {
            f(&x, wp, &b)
        });
        check_fd(&format!("{what} dbias"), &b, &gb, 1e-4, 9, |bp| {
            f(&x, &w, bp)
        });
    }
}
