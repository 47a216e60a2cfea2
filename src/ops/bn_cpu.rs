//! Fused CPU batch norm (training mode), optionally followed by ReLU.
//!
//! Built from candle ops, batch norm makes a dozen passes over the activation in
//! forward and more in backward (each broadcast op and reduction is its own pass and
//! allocation). This custom op computes the per-channel statistics in one pass (sum
//! and sum of squares in f64), normalises (and applies ReLU) in a second, and in
//! backward needs one pass for the two per-channel sums and one for `dx`. Parallel
//! over channels (statistics) and over `(n, c)` rows (element-wise passes); every sum
//! has a fixed order, so results are deterministic.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::dispatch::{dispatch, FloatKernel};

/// Per-channel batch statistics: mean and biased variance.
#[derive(Debug, Clone, Default)]
pub(super) struct Stats {
    pub(super) mean: Vec<f64>,
    pub(super) var: Vec<f64>,
}

/// `[N, C, L]` geometry of a contiguous NCTHW tensor.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ncl {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) l: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Σx and Σx² of every channel, in f64, in a fixed order.
fn channel_stats<T: WithDType>(g: Ncl, x: &[T]) -> Stats {
    let m = (g.n * g.l) as f64;
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..g.c)
        .into_par_iter()
        .map(|c| {
            let (mut s, mut q) = (0f64, 0f64);
            for n in 0..g.n {
                let row = &x[(n * g.c + c) * g.l..][..g.l];
                // Eight independent partial sums per row: vectorisable, fixed order.
                let (mut s8, mut q8) = ([0f64; 8], [0f64; 8]);
                let mut it = row.chunks_exact(8);
                for ch in &mut it {
                    for i in 0..8 {
                        let v = ch[i].to_f64();
                        s8[i] += v;
                        q8[i] += v * v;
                    }
                }
                for v in it.remainder() {
                    let v = v.to_f64();
                    s8[0] += v;
                    q8[0] += v * v;
                }
                s += s8.iter().sum::<f64>();
                q += q8.iter().sum::<f64>();
            }
            let mean = s / m;
            (mean, (q / m - mean * mean).max(0.0))
        })
        .unzip();
    Stats { mean, var }
}

/// Training-mode batch norm `(x, weight, bias) -> y`, with optional ReLU. The batch
/// statistics it computes are left in `stats` for the caller (running averages) and
/// for the backward pass.
pub(super) struct BnTrain {
    pub(super) g: Ncl,
    pub(super) eps: f64,
    pub(super) relu: bool,
    pub(super) stats: Arc<Mutex<Stats>>,
}

/// `(x, weight, bias) -> y`; the batch statistics are left in `stats`.
impl FloatKernel<3> for BnTrain {
    fn run<T: WithDType>(&self, [x, w, b]: [&[T]; 3]) -> Vec<T> {
        let (mean, scale, shift) = self.prepare(x, w, b);
        let tail = if self.relu { Tail::Relu } else { Tail::None };
        affine_rows(self.g, x, (&mean, &scale, &shift), tail)
    }
}

impl BnTrain {
    /// The batch statistics of `x` (left in `stats`) and each channel's
    /// `(mean, scale, shift)`.
    #[allow(clippy::type_complexity)]
    fn prepare<T: WithDType>(&self, x: &[T], w: &[T], b: &[T]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let st = channel_stats(self.g, x);
        let scale: Vec<f64> = (0..self.g.c)
            .map(|c| w[c].to_f64() / (st.var[c] + self.eps).sqrt())
            .collect();
        let shift: Vec<f64> = (0..self.g.c).map(|c| b[c].to_f64()).collect();
        let mean = st.mean.clone();
        *lock(&self.stats) = st;
        (mean, scale, shift)
    }

    /// `relu(bn(x) + skip)`: the residual block's tail in one pass, bit for bit what
    /// this op (without ReLU) followed by [`super::fused::add_relu`] computes (the
    /// normalised value is rounded to `T` before the add).
    pub(super) fn run_add_relu<T: WithDType>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        skip: &[T],
    ) -> Vec<T> {
        let (mean, scale, shift) = self.prepare(x, w, b);
        affine_rows(self.g, x, (&mean, &scale, &shift), Tail::AddRelu(skip))
    }

    /// The statistics the last forward left.
    pub(super) fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "vssl-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = super::profile::timed(
            "bn.fwd",
            || format!("{:?}", l1.dims()),
            0.0,
            || dispatch(self.name(), [(s1, l1), (s2, l2), (s3, l3)], self),
        )?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let sums = Arc::new(Mutex::new(Stats::default()));
        let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>();
        let op = BnBwd {
            g: self.g,
            eps: self.eps,
            relu: self.relu,
            stats: lock(&self.stats).clone(),
            weight: f64s(w)?,
            bias: f64s(b)?,
            sums: sums.clone(),
        };
        let dx = x.apply_op2_no_bwd(&dy.contiguous()?, &op)?;
        let s = lock(&sums).clone();
        // `sums` holds (Σ dy, Σ dy·x̂) per channel: the bias and weight gradients.
        let db = Tensor::from_vec(s.mean, self.g.c, x.device())?.to_dtype(w.dtype())?;
        let dw = Tensor::from_vec(s.var, self.g.c, x.device())?.to_dtype(w.dtype())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// What follows the affine map in [`affine_rows`].
#[derive(Clone, Copy)]
enum Tail<'a, T> {
    None,
    /// `max(·, 0)` in f64, before rounding to `T`.
    Relu,
    /// `relu(round(·) + skip)` in `T`, as the separate add+ReLU op computes it.
    AddRelu(&'a [T]),
}

/// `y = (x - mean[c])·scale[c] + shift[c]`, then `tail`, over `[N, C, L]` rows.
/// Centring first keeps f32 exact-ish when |mean| ≫ std.
fn affine_rows<T: WithDType>(
    g: Ncl,
    x: &[T],
    (mean, scale, shift): (&[f64], &[f64], &[f64]),
    tail: Tail<T>,
) -> Vec<T> {
    let zero = T::zero();
    // Written through its spare capacity, every element once (no zeroing pass).
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(g.l)
        .zip(x.par_chunks(g.l))
        .enumerate()
        .for_each(|(i, (yr, xr))| {
            let c = i % g.c;
            // In f64: the centred value must not lose the mean's rounding error.
            let (m, a, b) = (mean[c], scale[c], shift[c]);
            let v = |x: &T| (x.to_f64() - m) * a + b;
            match tail {
                Tail::None => {
                    for (y, x) in yr.iter_mut().zip(xr) {
                        y.write(T::from_f64(v(x)));
                    }
                }
                Tail::Relu => {
                    for (y, x) in yr.iter_mut().zip(xr) {
                        y.write(T::from_f64(v(x).max(0.0)));
                    }
                }
                Tail::AddRelu(skip) => {
                    let sr = &skip[i * g.l..][..g.l];
                    for ((y, x), s) in yr.iter_mut().zip(xr).zip(sr) {
                        let t = T::from_f64(v(x)) + *s;
                        y.write(if t > zero { t } else { zero });
                    }
                }
            }
        });
    // SAFETY: the chunks cover all `x.len()` elements and each was written.
    unsafe { y.set_len(x.len()) };
    y
}

/// Backward of [`BnTrain`]: `(x, dy) -> dx`; leaves `(Σ g, Σ g·x̂)` per channel in
/// `sums` (as `mean`, `var`), where `g` is `dy` masked by `y > 0` under ReLU. The mask
/// is recomputed from `x` with the forward's own f64 arithmetic and rounding (so it
/// is bit-identical to testing `y`), which spares reading `y` twice: this pass is
/// memory-bound.
pub(super) struct BnBwd {
    pub(super) g: Ncl,
    pub(super) eps: f64,
    pub(super) relu: bool,
    pub(super) stats: Stats,
    pub(super) weight: Vec<f64>,
    pub(super) bias: Vec<f64>,
    pub(super) sums: Arc<Mutex<Stats>>,
}

impl BnBwd {
    /// The forward's scale and shift of channel `c` (as [`BnTrain`] computes them).
    fn affine(&self, c: usize) -> (f64, f64, f64) {
        let scale = self.weight[c] / (self.stats.var[c] + self.eps).sqrt();
        (self.stats.mean[c], scale, self.bias[c])
    }
}

impl FloatKernel<2> for BnBwd {
    fn run<T: WithDType>(&self, [x, dy]: [&[T]; 2]) -> Vec<T> {
        let g = self.g;
        let relu = self.relu;
        // Σ g and Σ g·x per channel, g = dy masked by y > 0 under ReLU. Eight
        // independent partial sums in a fixed order and a select instead of a branch
        // (the ReLU mask is a coin flip per element: a branch mispredicts half the
        // time), so the loop vectorises.
        let (sg, sgx): (Vec<f64>, Vec<f64>) = (0..g.c)
            .into_par_iter()
            .map(|c| {
                let fwd = self.affine(c);
                let (mut a8, mut b8) = ([0f64; 8], [0f64; 8]);
                for n in 0..g.n {
                    let base = (n * g.c + c) * g.l;
                    let (xr, dr) = (&x[base..][..g.l], &dy[base..][..g.l]);
                    let whole = g.l / 8 * 8;
                    for j in (0..whole).step_by(8) {
                        for i in 0..8 {
                            let gi = masked(relu, fwd, dr[j + i], xr[j + i]);
                            a8[i] += gi;
                            b8[i] += gi * xr[j + i].to_f64();
                        }
                    }
                    for j in whole..g.l {
                        let gi = masked(relu, fwd, dr[j], xr[j]);
                        a8[0] += gi;
                        b8[0] += gi * xr[j].to_f64();
                    }
                }
                (a8.iter().sum::<f64>(), b8.iter().sum::<f64>())
            })
            .unzip();
        let m = (g.n * g.l) as f64;
        let mut sgxhat = vec![0f64; g.c];
        // dx = a·g + b·(x - μ) + k per channel.
        let coef: Vec<(f64, f64, f64, f64)> = (0..g.c)
            .map(|c| {
                let inv = 1.0 / (self.stats.var[c] + self.eps).sqrt();
                let mu = self.stats.mean[c];
                sgxhat[c] = (sgx[c] - mu * sg[c]) * inv;
                let a = self.weight[c] * inv;
                let b = -a * inv * sgxhat[c] / m;
                let k = -a * sg[c] / m;
                (a, b, k, mu)
            })
            .collect();
        let mut dx = Vec::with_capacity(x.len());
        dx.spare_capacity_mut()
            .par_chunks_mut(g.l)
            .enumerate()
            .for_each(|(r, d)| {
                let (a, b, k, mu) = coef[r % g.c];
                let fwd = self.affine(r % g.c);
                let base = r * g.l;
                let (xr, dyr) = (&x[base..base + g.l], &dy[base..base + g.l]);
                for (di, (xi, dyi)) in d.iter_mut().zip(xr.iter().zip(dyr)) {
                    let gi = masked(relu, fwd, *dyi, *xi);
                    di.write(T::from_f64(a * gi + b * (xi.to_f64() - mu) + k));
                }
            });
        // SAFETY: the row chunks cover all `x.len()` elements and each was written.
        unsafe { dx.set_len(x.len()) };
        *lock(&self.sums) = Stats {
            mean: sg,
            var: sgxhat,
        };
        dx
    }
}

/// `dy` where the ReLU passed its input (`y > 0`), else 0; all of `dy` without ReLU.
/// `y > 0` is decided from `x` exactly as [`affine_rows`] computed `y` (same f64
/// expression, same rounding to `T`). Written as a select so loops stay branch-free
/// (the mask is a coin flip per element: a branch mispredicts half the time).
#[inline(always)]
fn masked<T: WithDType>(relu: bool, (m, a, b): (f64, f64, f64), dy: T, x: T) -> f64 {
    let d = dy.to_f64();
    let y = T::from_f64(((x.to_f64() - m) * a + b).max(0.0));
    let off = relu & (y <= T::zero());
    if off {
        0.0
    } else {
        d
    }
}

impl CustomOp2 for BnBwd {
    fn name(&self) -> &'static str {
        "vssl-batch-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dx = super::profile::timed(
            "bn.bwd",
            || format!("{:?}", l1.dims()),
            0.0,
            || dispatch(self.name(), [(s1, l1), (s2, l2)], self),
        )?;
        Ok((dx, l1.shape().clone()))
    }
}
