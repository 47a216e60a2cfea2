//! Batch normalisation over NCTHW tensors with PyTorch's `nn.BatchNorm3d` semantics.
//!
//! candle-nn's `BatchNorm` keeps its running statistics in plain tensors and cannot
//! store them in a [`VarStore`] buffer, and its defaults differ from PyTorch's. This
//! layer keeps `running_mean`, `running_var` and `num_batches_tracked` as store
//! buffers (so checkpoints match torchvision's names) and is composed from candle
//! tensor ops only, so it runs on every device with autograd.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor, Var};

use super::bn_cpu::{BnTrain, Ncl, Stats};
use super::dispatch::cpu_float;
use super::{dims5, op_error};
use crate::nn::{Init, VarStore};
use crate::Result;

const OP: &str = "BatchNorm3d";

/// 3D batch normalisation: per-channel statistics over (N, T, H, W).
pub struct BatchNorm3d {
    /// Scale γ, `[C]`, trainable.
    pub weight: Tensor,
    /// Shift β, `[C]`, trainable.
    pub bias: Tensor,
    /// Buffer `[C]`, exponential average of batch means.
    pub running_mean: Var,
    /// Buffer `[C]`, exponential average of unbiased batch variances.
    pub running_var: Var,
    /// Buffer `[]` (i64): training steps seen.
    pub num_batches_tracked: Var,
    pub eps: f64,
    pub momentum: f64,
    channels: usize,
}

impl BatchNorm3d {
    /// PyTorch defaults: eps 1e-5, momentum 0.1.
    pub fn new(vs: &VarStore, channels: usize) -> Result<Self> {
        Self::with_options(vs, channels, 1e-5, 0.1)
    }

    /// Creates (or fetches) `weight` (ones), `bias` (zeros) and the buffers
    /// `running_mean` (zeros), `running_var` (ones), `num_batches_tracked` (0, i64).
    pub fn with_options(vs: &VarStore, channels: usize, eps: f64, momentum: f64) -> Result<Self> {
        if channels == 0 {
            return Err(op_error(OP, "channels must be positive"));
        }
        if eps.is_nan() || eps <= 0.0 || !(0.0..=1.0).contains(&momentum) {
            return Err(op_error(
                OP,
                format!("need eps > 0 and momentum in [0, 1], got eps {eps}, momentum {momentum}"),
            ));
        }
        let dtype = vs.dtype();
        Ok(Self {
            weight: vs.var("weight", channels, Init::Const(1.0))?,
            bias: vs.var("bias", channels, Init::Const(0.0))?,
            running_mean: vs.buffer("running_mean", channels, 0.0, dtype)?,
            running_var: vs.buffer("running_var", channels, 1.0, dtype)?,
            num_batches_tracked: vs.buffer("num_batches_tracked", (), 0.0, DType::I64)?,
            eps,
            momentum,
            channels,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `train`: normalise with the batch's mean and biased variance over (N, T, H, W),
    /// then update the running statistics (momentum-weighted, unbiased variance, outside
    /// the autograd graph) and count the batch. Otherwise normalise with the running
    /// statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, false)
    }

    /// [`Self::forward_t`] followed by ReLU when `relu` (fused into one pass on CPU).
    pub fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if super::is_half(x) {
            // Mixed precision: statistics and normalisation in f32.
            let y = self.forward_act(&x.to_dtype(DType::F32)?, train, relu)?;
            return Ok(y.to_dtype(x.dtype())?);
        }
        let d = dims5(OP, "input", x)?;
        let c = self.channels;
        if d[1] != c {
            return Err(op_error(
                OP,
                format!("input {d:?} has {} channels, layer expects {c}", d[1]),
            ));
        }
        let count = d[0] * d[2] * d[3] * d[4];
        if train {
            if let Some(group) = super::collective::sync_bn_group() {
                let y = self.forward_sync(x, d, &group)?;
                return Ok(if relu { y.relu()? } else { y });
            }
        }
        if train && count >= 2 && cpu_float(x) {
            return self.forward_cpu_train(x, d, relu);
        }
        let y = self.forward_generic(x, d, train)?;
        Ok(if relu { y.relu()? } else { y })
    }

    /// The fused CPU kernel ([`super::bn_cpu`]) in training mode.
    fn forward_cpu_train(&self, x: &Tensor, d: [usize; 5], relu: bool) -> Result<Tensor> {
        let dtype = x.dtype();
        let c = self.channels;
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = BnTrain {
            g: Ncl {
                n: d[0],
                c,
                l: d[2] * d[3] * d[4],
            },
            eps: self.eps,
            relu,
            stats: stats.clone(),
        };
        let w = self.weight.to_dtype(dtype)?.contiguous()?;
        let b = self.bias.to_dtype(dtype)?.contiguous()?;
        let y = x.contiguous()?.apply_op3(&w, &b, op)?;
        let st = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dev = x.device();
        let mean = Tensor::from_vec(st.mean, c, dev)?;
        let var = Tensor::from_vec(st.var, c, dev)?;
        self.update_running(&mean, &var, d[0] * d[2] * d[3] * d[4])?;
        Ok(y)
    }

    /// Batch norm composed from candle ops (any device).
    fn forward_generic(&self, x: &Tensor, d: [usize; 5], train: bool) -> Result<Tensor> {
        let c = self.channels;
        let dtype = x.dtype();
        let per_channel =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.reshape((1, c, 1, 1, 1))?) };
        let (w, b) = (per_channel(&self.weight)?, per_channel(&self.bias)?);
        if !train {
            let rm = per_channel(&self.running_mean.as_tensor().detach())?;
            let rv = per_channel(&self.running_var.as_tensor().detach())?;
            let scale = rv.affine(1.0, self.eps)?.sqrt()?.recip()?.mul(&w)?;
            return Ok(x
                .broadcast_sub(&rm)?
                .broadcast_mul(&scale)?
                .broadcast_add(&b)?);
        }

        let count = d[0] * d[2] * d[3] * d[4];
        if count < 2 {
            return Err(op_error(
                OP,
                format!("training needs more than one value per channel, got input {d:?}"),
            ));
        }
        // [N, C, L]; statistics over N and L (mean of per-sample means: equal counts).
        let xr = x.reshape((d[0], c, count / d[0]))?;
        let mean = xr.mean_keepdim(2)?.mean_keepdim(0)?;
        let xc = xr.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
        let inv = var.affine(1.0, self.eps)?.sqrt()?.recip()?;
        self.finish_train(&xc, &inv, &mean, &var, d, count)
    }

    /// `xc · inv · γ + β` (centred values, per-channel inverse deviations, in x's
    /// type), reshaped to `d`; the running statistics updated from the batch's
    /// `mean` and `var` over `count` values.
    fn finish_train(
        &self,
        xc: &Tensor,
        inv: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        d: [usize; 5],
        count: usize,
    ) -> Result<Tensor> {
        let (c, dtype) = (self.channels, xc.dtype());
        let per_channel =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.reshape((1, c, 1, 1, 1))?) };
        let y = xc
            .broadcast_mul(inv)?
            .reshape(d.to_vec())?
            .broadcast_mul(&per_channel(&self.weight)?)?
            .broadcast_add(&per_channel(&self.bias)?)?;
        self.update_running(
            &mean.detach().flatten_all()?,
            &var.detach().flatten_all()?,
            count,
        )?;
        Ok(y)
    }

    /// Training mode with the statistics of every rank's batch (synchronised batch
    /// norm): per-channel sums all-reduced, then the centred sums of squares, both
    /// differentiably, so each rank's gradients include what its values did to the
    /// other ranks' normalisation. Every rank must hold as many values per channel.
    fn forward_sync(
        &self,
        x: &Tensor,
        d: [usize; 5],
        group: &Arc<dyn super::collective::Collective>,
    ) -> Result<Tensor> {
        use super::collective::all_reduce;
        let c = self.channels;
        let local = d[0] * d[2] * d[3] * d[4];
        let count = local * group.world();
        if count < 2 {
            return Err(op_error(
                OP,
                format!("training needs more than one value per channel, got input {d:?}"),
            ));
        }
        let dtype = x.dtype();
        // Statistics in f64 (as the CPU kernel keeps them), normalisation in x's type.
        let xr = x.reshape((d[0], c, local / d[0]))?;
        let x64 = xr.to_dtype(DType::F64)?;
        let inv_count = 1.0 / count as f64;
        let sum = x64.sum_keepdim(2)?.sum_keepdim(0)?;
        let mean = all_reduce(&sum, group)?.affine(inv_count, 0.0)?;
        let squares = x64
            .broadcast_sub(&mean)?
            .sqr()?
            .sum_keepdim(2)?
            .sum_keepdim(0)?;
        let var = all_reduce(&squares, group)?.affine(inv_count, 0.0)?;
        let inv = var.affine(1.0, self.eps)?.sqrt()?.recip()?;
        let xc = xr.broadcast_sub(&mean.to_dtype(dtype)?)?;
        self.finish_train(&xc, &inv.to_dtype(dtype)?, &mean, &var, d, count)
    }

    /// Running statistics from the batch `mean` and biased `var` (`[C]`, over `count`
    /// values), detached: PyTorch's x̂ = (1 - m)·x̂ + m·x with the unbiased variance;
    /// counts the batch.
    pub(super) fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let stat_dtype = self.running_mean.dtype();
        let batch_mean = mean.to_dtype(stat_dtype)?;
        let unbiased = (var.to_dtype(DType::F64)? * (count as f64 / (count - 1) as f64))?
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The composed form (what CUDA and every other non-CPU device run) against the
    //! CPU kernel, on the CPU: forward, gradients and running statistics, with and
    //! without the fused ReLU.
    use super::*;
    use candle_core::Device;

    /// A layer whose scale and shift are `w` and `b` (`[3]`).
    fn layer(w: &Tensor, b: &Tensor) -> BatchNorm3d {
        let vs = VarStore::new(&Device::Cpu, 0);
        let bn = BatchNorm3d::new(&vs, 3).unwrap();
        for (name, v) in vs.all() {
            match name.as_str() {
                "weight" => v.set(w).unwrap(),
                "bias" => v.set(b).unwrap(),
                _ => {}
            }
        }
        bn
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= tol * scale,
            "{what}: max diff {diff} (scale {scale})"
        );
    }

    #[test]
    fn composed_form_equals_the_cpu_kernel() {
        for relu in [false, true] {
            let w = Tensor::randn(0.5f32, 1.0, 3, &Device::Cpu).unwrap();
            let b = Tensor::randn(0.5f32, 1.0, 3, &Device::Cpu).unwrap();
            let (kernel, composed) = (layer(&w, &b), layer(&w, &b));
            let d = [2, 3, 3, 4, 5];
            let x =
                Var::from_tensor(&Tensor::randn(0.3f32, 2.0, d.to_vec(), &Device::Cpu).unwrap())
                    .unwrap();
            let r = Tensor::randn(0f32, 1.0, d.to_vec(), &Device::Cpu).unwrap();
            let yk = kernel.forward_act(x.as_tensor(), true, relu).unwrap();
            let mut yc = composed.forward_generic(x.as_tensor(), d, true).unwrap();
            if relu {
                yc = yc.relu().unwrap();
            }
            close("forward", &vals(&yk), &vals(&yc), 1e-5);
            let gk = (&yk * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&yc * &r).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                "dx",
                &vals(gk.get(x.as_tensor()).unwrap()),
                &vals(gc.get(x.as_tensor()).unwrap()),
                1e-4,
            );
            for (name, a, b) in [
                ("dweight", &kernel.weight, &composed.weight),
                ("dbias", &kernel.bias, &composed.bias),
            ] {
                close(
                    name,
                    &vals(gk.get(a).unwrap()),
                    &vals(gc.get(b).unwrap()),
                    1e-4,
                );
            }
            for (name, a, b) in [
                ("running_mean", &kernel.running_mean, &composed.running_mean),
                ("running_var", &kernel.running_var, &composed.running_var),
            ] {
                close(name, &vals(a.as_tensor()), &vals(b.as_tensor()), 1e-5);
            }
        }
    }

    /// Synchronised batch norm on two thread ranks, each holding half the batch,
    /// equals the CPU kernel on the whole batch: each rank's output and input
    /// gradient are its half of the whole batch's, the ranks' weight gradients sum to
    /// the whole batch's, and every rank's running statistics are the whole batch's.
    #[test]
    fn synchronised_form_on_two_ranks_equals_the_kernel_on_the_whole_batch() {
        use crate::ops::collective::{tests::on_ranks, ParallelScope};
        let dev = Device::Cpu;
        let d = [4, 3, 3, 4, 5];
        let half = [2, 3, 3, 4, 5];
        let w = vals(&Tensor::randn(0.5f32, 1.0, 3, &dev).unwrap());
        let b = vals(&Tensor::randn(0.5f32, 1.0, 3, &dev).unwrap());
        let x = vals(&Tensor::randn(0.3f32, 2.0, d.to_vec(), &dev).unwrap());
        let r = vals(&Tensor::randn(0f32, 1.0, d.to_vec(), &dev).unwrap());
        let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap();

        let whole = layer(&t(&w, &[3]), &t(&b, &[3]));
        let xv = Var::from_tensor(&t(&x, &d)).unwrap();
        let y = whole.forward_act(xv.as_tensor(), true, true).unwrap();
        let g = (&y * t(&r, &d))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (y, dx) = (vals(&y), vals(g.get(xv.as_tensor()).unwrap()));
        let (dw, db) = (
            vals(g.get(&whole.weight).unwrap()),
            vals(g.get(&whole.bias).unwrap()),
        );

        let n = x.len() / 2;
        let ranks = on_ranks(2, move |group| {
            let dev = Device::Cpu;
            let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap();
            let k = group.rank();
            let bn = layer(&t(&w, &[3]), &t(&b, &[3]));
            let xv = Var::from_tensor(&t(&x[k * n..(k + 1) * n], &half)).unwrap();
            let _sync = ParallelScope::enter(group, true);
            let y = bn.forward_act(xv.as_tensor(), true, true).unwrap();
            let loss = (&y * t(&r[k * n..(k + 1) * n], &half))
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            vec![
                vals(&y),
                vals(g.get(xv.as_tensor()).unwrap()),
                vals(g.get(&bn.weight).unwrap()),
                vals(g.get(&bn.bias).unwrap()),
                vals(bn.running_mean.as_tensor()),
                vals(bn.running_var.as_tensor()),
            ]
        });
        // Output `i` of every rank, concatenated in rank order, or summed over ranks.
        let cat = |i: usize| {
            ranks
                .iter()
                .flat_map(|o| o[i].clone())
                .collect::<Vec<f32>>()
        };
        let sum = |i: usize| {
            (0..3)
                .map(|c| ranks.iter().map(|o| o[i][c]).sum())
                .collect::<Vec<f32>>()
        };
        close("forward", &y, &cat(0), 1e-5);
        close("dx", &dx, &cat(1), 1e-4);
        close("dweight", &dw, &sum(2), 1e-4);
        close("dbias", &db, &sum(3), 1e-4);
        for o in &ranks {
            close(
                "running_mean",
                &vals(whole.running_mean.as_tensor()),
                &o[4],
                1e-5,
            );
            close(
                "running_var",
                &vals(whole.running_var.as_tensor()),
                &o[5],
                1e-5,
            );
        }
    }
}
