//! Temporal Group Normalization (TGN) over NCTHW tensors.
//!
//! TGN is batch normalisation with the time axis cut into `G` contiguous groups:
//! group `g` is normalised with its own batch statistics over (N, T_g, H, W), has its
//! own per-channel affine `(γ_g, β_g)` and its own running statistics. It lets a
//! network normalise early and late parts of a clip differently (SpeedSortPretext,
//! `METHODS.md` section 2).
//!
//! **Groups.** For `T` time steps and `G` groups the groups follow
//! `torch.tensor_split(x, G, dim=2)`: when `G` divides `T` every group has `T / G`
//! steps; otherwise the first `T mod G` groups have `⌊T/G⌋ + 1` steps and the rest
//! `⌊T/G⌋` (as equal as possible, see [`group_bounds`]). `G` is fixed when the layer
//! is built (the running statistics have a fixed shape); an input with `T < G` is an
//! error. The backbones clamp `G` to the time steps each layer sees at build time.
//!
//! **State-dict names and shapes** (torchvision's batch-norm names):
//! `weight`, `bias` (trainable), `running_mean`, `running_var` (buffers) have shape
//! `[G, C]` (row `g` belongs to group `g`, earliest frames first), and
//! `num_batches_tracked` is an i64 scalar counting training forward passes (one count
//! per pass, shared by the groups). With `G = 1` the four tensors have shape `[C]`, so
//! a TGN layer with one group has exactly `nn.BatchNorm3d`'s state dict, loads its
//! weights, and computes exactly what [`BatchNorm3d`](super::BatchNorm3d) computes.
//!
//! **Semantics** (PyTorch's `BatchNorm3d` per group, eps 1e-5, momentum 0.1): in
//! training the group is normalised with its batch mean and biased variance, and its
//! running statistics become `(1 - m)·r + m·batch` with the *unbiased* batch variance
//! (outside the autograd graph); in evaluation the running statistics are used.
//! Composed from candle tensor ops only: every device, with autograd.

use candle_core::{DType, Tensor, Var};

use super::{dims5, op_error};
use crate::nn::{Init, VarStore};
use crate::Result;

const OP: &str = "TemporalGroupNorm";

/// The `(start, len)` of each of `groups` contiguous groups of `t` time steps, as
/// `torch.tensor_split`: the first `t % groups` groups get one extra step. Needs
/// `1 <= groups <= t`.
pub fn group_bounds(t: usize, groups: usize) -> Vec<(usize, usize)> {
    let (base, extra) = (t / groups, t % groups);
    let mut start = 0;
    (0..groups)
        .map(|g| {
            let len = base + usize::from(g < extra);
            let b = (start, len);
            start += len;
            b
        })
        .collect()
}

/// Temporal group normalisation layer (see the module docs).
pub struct TemporalGroupNorm {
    /// Scale γ, `[G, C]` (`[C]` when `G = 1`), trainable.
    pub weight: Tensor,
    /// Shift β, `[G, C]` (`[C]` when `G = 1`), trainable.
    pub bias: Tensor,
    /// Buffer `[G, C]` (`[C]` when `G = 1`): exponential average of group batch means.
    pub running_mean: Var,
    /// Buffer `[G, C]` (`[C]` when `G = 1`): exponential average of unbiased variances.
    pub running_var: Var,
    /// Buffer `[]` (i64): training forward passes seen.
    pub num_batches_tracked: Var,
    pub eps: f64,
    pub momentum: f64,
    channels: usize,
    groups: usize,
}

impl TemporalGroupNorm {
    /// PyTorch's batch-norm defaults: eps 1e-5, momentum 0.1.
    pub fn new(vs: &VarStore, channels: usize, groups: usize) -> Result<Self> {
        Self::with_options(vs, channels, groups, 1e-5, 0.1)
    }

    /// Creates (or fetches) `weight` (ones), `bias` (zeros) and the buffers
    /// `running_mean` (zeros), `running_var` (ones), `num_batches_tracked` (0, i64).
    pub fn with_options(
        vs: &VarStore,
        channels: usize,
        groups: usize,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        if channels == 0 || groups == 0 {
            return Err(op_error(
                OP,
                format!("channels and groups must be positive, got {channels} and {groups}"),
            ));
        }
        if eps.is_nan() || eps <= 0.0 || !(0.0..=1.0).contains(&momentum) {
            return Err(op_error(
                OP,
                format!("need eps > 0 and momentum in [0, 1], got eps {eps}, momentum {momentum}"),
            ));
        }
        let shape: Vec<usize> = if groups == 1 {
            vec![channels]
        } else {
            vec![groups, channels]
        };
        let dtype = vs.dtype();
        Ok(Self {
            weight: vs.var("weight", shape.clone(), Init::Const(1.0))?,
            bias: vs.var("bias", shape.clone(), Init::Const(0.0))?,
            running_mean: vs.buffer("running_mean", shape.clone(), 0.0, dtype)?,
            running_var: vs.buffer("running_var", shape, 1.0, dtype)?,
            num_batches_tracked: vs.buffer("num_batches_tracked", (), 0.0, DType::I64)?,
            eps,
            momentum,
            channels,
            groups,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The number of temporal groups `G`.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// `train`: normalise each temporal group with its batch statistics and update its
    /// running statistics; otherwise normalise with the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if super::is_half(x) {
            // Mixed precision: statistics and normalisation in f32.
            let y = self.forward_t(&x.to_dtype(candle_core::DType::F32)?, train)?;
            return Ok(y.to_dtype(x.dtype())?);
        }
        let d = dims5(OP, "input", x)?;
        let (c, g, t) = (self.channels, self.groups, d[2]);
        if d[1] != c {
            return Err(op_error(
                OP,
                format!("input {d:?} has {} channels, layer expects {c}", d[1]),
            ));
        }
        if t < g {
            return Err(op_error(
                OP,
                format!("input {d:?} has {t} time steps, fewer than the layer's {g} groups"),
            ));
        }
        let dtype = x.dtype();
        // Parameters and statistics as [G, C] rows in the input's dtype.
        let rows = |p: &Tensor| -> Result<Tensor> { Ok(p.to_dtype(dtype)?.reshape((g, c))?) };
        let (w, b) = (rows(&self.weight)?, rows(&self.bias)?);
        let bounds = group_bounds(t, g);
        if !train {
            let rm = rows(&self.running_mean.as_tensor().detach())?;
            let rv = rows(&self.running_var.as_tensor().detach())?;
            let scale = rv.affine(1.0, self.eps)?.sqrt()?.recip()?.mul(&w)?;
            // Expand [G, C] to the [1, C, T, 1, 1] value each time step uses.
            let per_t = |r: &Tensor| -> Result<Tensor> {
                if g == 1 {
                    return Ok(r.reshape((1, c, 1, 1, 1))?);
                }
                let idx: Vec<u32> = bounds
                    .iter()
                    .enumerate()
                    .flat_map(|(gi, &(_, len))| std::iter::repeat_n(gi as u32, len))
                    .collect();
                let idx = Tensor::new(idx, r.device())?;
                Ok(r.index_select(&idx, 0)?.t()?.reshape((1, c, t, 1, 1))?)
            };
            return Ok(x
                .broadcast_sub(&per_t(&rm)?)?
                .broadcast_mul(&per_t(&scale)?)?
                .broadcast_add(&per_t(&b)?)?);
        }

        let hw = d[3] * d[4];
        let min_len = bounds.iter().map(|&(_, l)| l).min().unwrap_or(0);
        if d[0] * min_len * hw < 2 {
            return Err(op_error(
                OP,
                format!(
                    "training needs more than one value per channel and group, got input {d:?} with {g} groups"
                ),
            ));
        }
        // (output, batch means [G, C], biased batch variances [G, C], values per group)
        let (y, means, vars, counts) = if t % g == 0 {
            let (y, mean, var, count) = self.normalise_equal(x, &w, &b, d)?;
            (y, mean, var, vec![count; g])
        } else {
            self.normalise_each(x, &w, &b, d, &bounds)?
        };

        // Running statistics, detached: x̂ = (1 - m)·x̂ + m·x per group, with the
        // unbiased variance of that group's values.
        let m = self.momentum;
        let stat_dtype = self.running_mean.dtype();
        let shape = self.running_mean.shape().clone();
        let factors: Vec<f64> = counts.iter().map(|&n| n as f64 / (n - 1) as f64).collect();
        let factors = Tensor::new(factors, means.device())?
            .to_dtype(vars.dtype())?
            .reshape((g, 1))?;
        let batch_mean = means
            .detach()
            .reshape(shape.clone())?
            .to_dtype(stat_dtype)?;
        let unbiased = vars
            .detach()
            .broadcast_mul(&factors)?
            .reshape(shape)?
            .to_dtype(stat_dtype)?;
        let update = |buf: &Var, batch: &Tensor| -> Result<()> {
            let new = (buf.as_tensor().detach().affine(1.0 - m, 0.0)? + batch.affine(m, 0.0)?)?;
            Ok(buf.set(&new)?)
        };
        update(&self.running_mean, &batch_mean)?;
        update(&self.running_var, &unbiased)?;
        let nbt = self.num_batches_tracked.as_tensor().detach();
        let one = Tensor::ones(nbt.shape(), nbt.dtype(), nbt.device())?;
        self.num_batches_tracked.set(&(nbt + one)?)?;
        Ok(y)
    }

    /// Equal groups: one vectorised pass over `[N, C, G, T/G·H·W]`. Returns the output,
    /// the batch means and biased variances as `[G, C]`, and the values per group.
    fn normalise_equal(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        d: [usize; 5],
    ) -> Result<(Tensor, Tensor, Tensor, usize)> {
        let (n, c, g) = (d[0], self.channels, self.groups);
        let l = d[2] / g * d[3] * d[4];
        let xr = x.reshape((n, c, g, l))?;
        // Mean of per-sample means: every sample has the same count.
        let mean = xr.mean_keepdim(3)?.mean_keepdim(0)?;
        let xc = xr.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(3)?.mean_keepdim(0)?;
        let inv = var.affine(1.0, self.eps)?.sqrt()?.recip()?;
        let per_group = |r: &Tensor| -> Result<Tensor> { Ok(r.t()?.reshape((1, c, g, 1))?) };
        let y = xc
            .broadcast_mul(&inv)?
            .broadcast_mul(&per_group(w)?)?
            .broadcast_add(&per_group(b)?)?
            .reshape(d.to_vec())?;
        let as_rows = |s: &Tensor| -> Result<Tensor> { Ok(s.reshape((c, g))?.t()?.contiguous()?) };
        Ok((y, as_rows(&mean)?, as_rows(&var)?, n * l))
    }

    /// Unequal groups: each group normalised on its own slice, outputs concatenated
    /// along T. Same returns as [`Self::normalise_equal`], with a count per group.
    fn normalise_each(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        d: [usize; 5],
        bounds: &[(usize, usize)],
    ) -> Result<(Tensor, Tensor, Tensor, Vec<usize>)> {
        let (n, c) = (d[0], self.channels);
        let hw = d[3] * d[4];
        let (mut ys, mut means, mut vars, mut counts) = (vec![], vec![], vec![], vec![]);
        for (gi, &(start, len)) in bounds.iter().enumerate() {
            let l = len * hw;
            let xr = x.narrow(2, start, len)?.reshape((n, c, l))?;
            let mean = xr.mean_keepdim(2)?.mean_keepdim(0)?;
            let xc = xr.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
            let inv = var.affine(1.0, self.eps)?.sqrt()?.recip()?;
            let wg = w.get(gi)?.reshape((1, c, 1))?;
            let bg = b.get(gi)?.reshape((1, c, 1))?;
            let y = xc
                .broadcast_mul(&inv)?
                .broadcast_mul(&wg)?
                .broadcast_add(&bg)?
                .reshape((n, c, len, d[3], d[4]))?;
            ys.push(y);
            means.push(mean.flatten_all()?);
            vars.push(var.flatten_all()?);
            counts.push(n * l);
        }
        Ok((
            Tensor::cat(&ys, 2)?,
            Tensor::stack(&means, 0)?,
            Tensor::stack(&vars, 0)?,
            counts,
        ))
    }
}
