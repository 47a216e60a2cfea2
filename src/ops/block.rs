//! The identity residual block (conv-BN-ReLU-conv-BN, plus the input, ReLU) of
//! R3D-18 and MC3-18 as one CPU op in training.
//!
//! Why it exists: candle's backward adds every gradient a tensor receives into a
//! tensor of zeros it first allocates (`zeros_like`, then `add`): a zeroing pass and a
//! three-operand pass per edge of the graph. A basic block built from separate ops has
//! five activation-sized edges (both conv outputs, both norm outputs, the input); in
//! R3D-18's first layer at batch 2 each is a 25 MB tensor. This op runs the same
//! kernels as the separate ops (the conv passes of [`super::conv3d`](mod@super::conv3d),
//! the batch-norm passes of `bn_cpu`, the masked copy of [`super::fused`]) in one
//! forward and one backward and hands candle only the input's gradient and the
//! packed parameter gradients, so one edge is left. Its results are bit for bit those
//! of the composition (tests assert it), running statistics included. Measured: 3-5%
//! of an R3D-18 step at batch 8, within noise at batch 2 (`experiments/perf-cpu.md`).
//!
//! Everything else composes the separate layers: other devices, f64, biased convs,
//! blocks with a downsampling skip, evaluation mode, blocks whose conv weight has more
//! elements than the activation (packing it would cost more than the edges saved),
//! and `VSSL_FUSED_BLOCK=0`.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::batch_norm3d::BatchNorm3d;
use super::bn_cpu::{BnBwd, BnTrain, Ncl, Stats};
use super::conv3d::{Conv3d, CpuConv};
use super::dispatch::slices;
use super::fused::mask_kernel;
use super::profile;
use crate::Result;

/// The layers of one identity residual block, in order.
pub struct ResidualBlock<'a> {
    pub conv1: &'a Conv3d,
    pub bn1: &'a BatchNorm3d,
    pub conv2: &'a Conv3d,
    pub bn2: &'a BatchNorm3d,
}

/// Whether the fused block may run (`VSSL_FUSED_BLOCK=0` turns it off, for A/B
/// timing; read once).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !std::env::var("VSSL_FUSED_BLOCK").is_ok_and(|v| v == "0"))
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + x)` in training mode (batch statistics,
/// running statistics updated), as one CPU op. `None` where the fused op does not
/// apply (see the module docs) or the block's shapes do not keep `x`'s shape: the
/// caller composes the layers then.
pub fn residual_block_train(x: &Tensor, b: &ResidualBlock) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let params = [
        &b.conv1.weight,
        &b.conv2.weight,
        &b.bn1.weight,
        &b.bn1.bias,
        &b.bn2.weight,
        &b.bn2.bias,
    ];
    // Synchronised batch norm composes the layers (its statistics span the ranks).
    if !enabled()
        || super::collective::sync_bn_group().is_some()
        || !f32_cpu(x)
        || !params.iter().all(|t| f32_cpu(t))
        || b.conv1.bias.is_some()
        || b.conv2.bias.is_some()
    {
        return Ok(None);
    }
    let Ok::<[usize; 5], _>(d) = x.dims().try_into() else {
        return Ok(None);
    };
    let conv1 = CpuConv::new(x, &b.conv1.weight, &b.conv1.cfg)?;
    if conv1.y_dims() != d {
        return Ok(None);
    }
    // conv2 reads conv1's output, which has `x`'s shape.
    let conv2 = CpuConv::new(x, &b.conv2.weight, &b.conv2.cfg)?;
    let count = d[0] * d[2] * d[3] * d[4];
    if conv2.y_dims() != d || b.bn1.channels() != d[1] || b.bn2.channels() != d[1] || count < 2 {
        return Ok(None);
    }
    // Packing the weights costs copies of both (forward, and backward's narrows); the
    // gradient edges it saves cost passes over the activation. Deep layers, whose
    // weights outweigh their activations (R3D-18's layers 3-4), compose instead.
    if x.elem_count() < b.conv1.weight.elem_count() {
        return Ok(None);
    }
    let g = Ncl {
        n: d[0],
        c: d[1],
        l: d[2] * d[3] * d[4],
    };
    let stats = [(); 2].map(|_| Arc::new(Mutex::new(Stats::default())));
    let bn = |n: &BatchNorm3d, relu: bool, s: &Arc<Mutex<Stats>>| BnTrain {
        g,
        eps: n.eps,
        relu,
        stats: s.clone(),
    };
    let op = BlockOp {
        conv: [conv1, conv2],
        bn: [bn(b.bn1, true, &stats[0]), bn(b.bn2, false, &stats[1])],
        g,
        dims: d,
        split: b.conv1.weight.elem_count(),
        stash: Mutex::new(None),
    };
    let wpack = Tensor::cat(
        &[b.conv1.weight.flatten_all()?, b.conv2.weight.flatten_all()?],
        0,
    )?;
    let ppack = Tensor::cat(&[&b.bn1.weight, &b.bn1.bias, &b.bn2.weight, &b.bn2.bias], 0)?;
    let y = x.contiguous()?.apply_op3(&wpack, &ppack, op)?;
    for (n, s) in [b.bn1, b.bn2].into_iter().zip(&stats) {
        let st = s.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mean = Tensor::from_vec(st.mean, g.c, x.device())?;
        let var = Tensor::from_vec(st.var, g.c, x.device())?;
        n.update_running(&mean, &var, count)?;
    }
    Ok(Some(y))
}

/// The activations backward needs: conv1's output, the first ReLU's output (conv2's
/// input) and conv2's output.
struct Stash {
    c1: Vec<f32>,
    a1: Vec<f32>,
    c2: Vec<f32>,
}

/// `(x, [w1, w2] flattened, [γ1, β1, γ2, β2]) -> y`.
struct BlockOp {
    conv: [CpuConv; 2],
    bn: [BnTrain; 2],
    g: Ncl,
    /// The input's (and output's) shape.
    dims: [usize; 5],
    /// Elements of `w1` in the packed weights.
    split: usize,
    stash: Mutex<Option<Stash>>,
}

/// The profile rows' shape column, as the separate ops print it.
fn shape_of(d: [usize; 5]) -> String {
    format!("{d:?}")
}

/// A tensor's CPU storage (backward gets tensors, the kernels' slices come from
/// [`slices`] as in every custom op).
fn cpu(s: &Storage) -> candle_core::Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => Err(candle_core::Error::Msg(
            "vssl-residual-block: expected a CPU tensor".into(),
        )),
    }
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "vssl-residual-block"
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
        let [x, wp, pp] = slices::<f32, 3>(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let c = self.g.c;
        if x.len() != self.g.n * c * self.g.l || pp.len() != 4 * c || wp.len() < self.split {
            return Err(candle_core::Error::Msg(format!(
                "{}: operands of {} / {} / {} elements do not fit the block",
                self.name(),
                x.len(),
                wp.len(),
                pp.len()
            )));
        }
        let (w1, w2) = wp.split_at(self.split);
        let p = |k: usize| &pp[k * c..(k + 1) * c];
        let c1 = self.conv[0].fwd(&x, w1);
        let a1 = profile::timed(
            "bn.fwd",
            || shape_of(self.dims),
            0.0,
            || super::dispatch::FloatKernel::run(&self.bn[0], [&c1[..], p(0), p(1)]),
        );
        let c2 = self.conv[1].fwd(&a1, w2);
        let y = profile::timed(
            "bn-add-relu.fwd",
            || shape_of(self.dims),
            0.0,
            || self.bn[1].run_add_relu(&c2, p(2), p(3), &x),
        );
        *self.stash.lock().unwrap_or_else(|e| e.into_inner()) = Some(Stash { c1, a1, c2 });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wpack: &Tensor,
        ppack: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The network's input clip needs no gradient.
        let x_tracked = x.track_op();
        let dev = candle_core::Device::Cpu;
        let stash = self.stash.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = stash.as_ref() else {
            return Err(candle_core::Error::Msg(format!(
                "{}: backward without a forward",
                self.name()
            )));
        };
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = wpack.storage_and_layout();
        let (ps, pl) = ppack.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let [x, wp, pp, y, dy] = slices::<f32, 5>(
            self.name(),
            [
                (cpu(&xs)?, xl),
                (cpu(&ws)?, wl),
                (cpu(&ps)?, pl),
                (cpu(&ys)?, yl),
                (cpu(&ds)?, dl),
            ],
        )?;
        let (w1, w2) = wp.split_at(self.split);
        let c = self.g.c;
        let f64s = |k: usize| pp[k * c..(k + 1) * c].iter().map(|&v| v as f64).collect();
        let bn_bwd = |k: usize, relu: bool, xin: &[f32], g: &[f32]| {
            let sums = Arc::new(Mutex::new(Stats::default()));
            let op = BnBwd {
                g: self.g,
                eps: self.bn[k].eps,
                relu,
                stats: self.bn[k].stats(),
                weight: f64s(2 * k),
                bias: f64s(2 * k + 1),
                sums: sums.clone(),
            };
            let dx = profile::timed(
                "bn.bwd",
                || shape_of(self.dims),
                0.0,
                || super::dispatch::FloatKernel::run(&op, [xin, g]),
            );
            let s = sums.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // (Σ g, Σ g·x̂): the shift's and the scale's gradients.
            (dx, s.var, s.mean)
        };
        // The tail's ReLU passes the gradient where the output is positive; the same
        // masked gradient reaches bn2 and the skip.
        let gs = profile::timed(
            "vssl-relu-mask",
            || shape_of(self.dims),
            0.0,
            || mask_kernel(&dy, &y),
        );
        let (dc2, dg2, db2) = bn_bwd(1, false, &st.c2, &gs);
        let da1 = self.conv[1].dx(&dc2, w2);
        let dw2 = self.conv[1].dw(&st.a1, &dc2);
        // Each gradient is freed once used, as candle frees a node's gradient.
        drop(dc2);
        let (dc1, dg1, db1) = bn_bwd(0, true, &st.c1, &da1);
        drop(da1);
        let dw1 = self.conv[0].dw(&x, &dc1);
        let dx = if x_tracked {
            let mut dx = self.conv[0].dx(&dc1, w1);
            // The skip's share, added as candle adds the two edges' gradients.
            profile::timed(
                "block.skip-add",
                || shape_of(self.dims),
                0.0,
                || {
                    dx.par_chunks_mut(1 << 14)
                        .zip(gs.par_chunks(1 << 14))
                        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += *s))
                },
            );
            Some(Tensor::from_vec(dx, xl.shape().clone(), &dev)?)
        } else {
            None
        };
        let mut dw = dw1;
        dw.extend_from_slice(&dw2);
        let dp: Vec<f32> = [dg1, db1, dg2, db2]
            .iter()
            .flatten()
            .map(|&v| v as f32)
            .collect();
        let dw = Tensor::from_vec(dw, wl.shape().clone(), &dev)?;
        let dp = Tensor::from_vec(dp, pl.shape().clone(), &dev)?;
        Ok((dx, Some(dw), Some(dp)))
    }
}
