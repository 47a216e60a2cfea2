//! Data parallelism for the one training loop: every rank runs the loop on its
//! shard of each batch ([`crate::data::loader::Shard`]), and the pieces here keep
//! the ranks one model, as PyTorch's DistributedDataParallel does:
//!
//! - at the start, every rank takes rank 0's weights and buffers ([`sync_model`])
//!   and its method state ([`broadcast_tensors`]: a memory bank, a momentum encoder);
//! - after backward, the gradients are summed over the ranks in one flat buffer and
//!   divided by the world size ([`all_reduce_grads`]): with equal shards that is the
//!   gradient of the whole batch's mean loss, so clipping and the optimiser step see
//!   the same values on every rank and the weights stay identical;
//! - the logged loss and scalars are the ranks' mean ([`mean_over_ranks`]), so a
//!   non-finite value stops or skips the step on every rank alike;
//! - with per-rank batch norm, rank 0's running statistics are copied to the others
//!   after each step ([`buffers`], DDP's `broadcast_buffers`); with
//!   synchronised batch norm they are already equal.
//!
//! candle runs backward as one call, so the all-reduce cannot overlap it.

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::ops::collective::{self, Collective};
use crate::{Error, Result};

/// How a rank takes part in a data-parallel run.
#[derive(Clone)]
pub struct Parallel {
    pub group: Arc<dyn Collective>,
    /// Batch norm with statistics over every rank's batch (the papers' 8-GPU
    /// runs); otherwise each rank normalises with its own shard's.
    pub sync_bn: bool,
}

impl std::fmt::Debug for Parallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parallel")
            .field("rank", &self.group.rank())
            .field("world", &self.group.world())
            .field("sync_bn", &self.sync_bn)
            .finish()
    }
}

/// Float tensors as one host buffer, and back.
fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

fn from_host(v: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, like.shape(), like.device())?.to_dtype(like.dtype())?)
}

fn is_float(t: &Tensor) -> bool {
    t.dtype().is_float()
}

/// Whether this process writes the run: no data parallelism, or rank 0.
pub fn is_lead(parallel: Option<&Parallel>) -> bool {
    parallel.is_none_or(|p| p.group.rank() == 0)
}

/// Rank 0's copy of the float tensor `t`.
fn from_rank0(t: &Tensor, group: &dyn Collective) -> Result<Tensor> {
    let mut buf = to_host(t)?;
    group.broadcast(&mut buf, 0)?;
    from_host(buf, t)
}

/// Every float tensor of `vars` set to rank 0's (integer buffers such as batch
/// norm's step count advance identically on every rank and are left alone).
pub fn sync_model(vars: &[(String, Var)], group: &dyn Collective) -> Result<()> {
    for (_, v) in vars.iter().filter(|(_, v)| is_float(v)) {
        v.set(&from_rank0(v, group)?)?;
    }
    Ok(())
}

/// Rank 0's copy of every float tensor of `tensors` (a method's state: a memory
/// bank, a momentum encoder), the others as they are.
pub fn broadcast_tensors(
    tensors: Vec<(String, Tensor)>,
    group: &dyn Collective,
) -> Result<std::collections::BTreeMap<String, Tensor>> {
    tensors
        .into_iter()
        .map(|(k, t)| {
            if !is_float(&t) {
                // A copy: the state's own tensors may be variables it will set.
                return Ok((k, t.copy()?));
            }
            Ok((k, from_rank0(&t, group)?))
        })
        .collect()
}

/// The tensors of `vars` that are not in `params`: the buffers [`sync_model`] keeps
/// equal after each step when batch norm runs per rank.
pub fn buffers(vars: &[(String, Var)], params: &[Var]) -> Vec<(String, Var)> {
    let trainable: HashSet<_> = params.iter().map(|p| p.id()).collect();
    vars.iter()
        .filter(|(_, v)| !trainable.contains(&v.id()))
        .cloned()
        .collect()
}

/// The ranks' mean of `values` (the same on every rank).
pub fn mean_over_ranks(values: &mut [f64], group: &dyn Collective) -> Result<()> {
    let mut buf: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    group.all_reduce_sum(&mut buf)?;
    let w = group.world() as f64;
    for (v, s) in values.iter_mut().zip(buf) {
        *v = s as f64 / w;
    }
    Ok(())
}

/// Whether the gradients `have` can be summed on their device by `group`: NCCL
/// present, and all of one dtype on one device.
fn on_device(have: &[(Var, Tensor)], group: &dyn Collective) -> bool {
    let Some((_, first)) = have.first() else {
        return false;
    };
    have.iter()
        .all(|(_, g)| g.dtype() == first.dtype() && g.device().same_device(first.device()))
        && collective::on_device(first, group)
}

/// Replaces the gradient of each of `params` in `grads` by its mean over the
/// ranks: one all-reduce of every gradient in one flat buffer (in `params`' order,
/// which every rank shares), then a scale by `1 / world`.
pub fn all_reduce_grads(
    grads: &mut GradStore,
    params: &[Var],
    group: &dyn Collective,
) -> Result<()> {
    // Which parameters have a gradient must agree between ranks, or the flat
    // buffers would not line up.
    let mut present: Vec<f32> = params
        .iter()
        .map(|p| if grads.get(p).is_some() { 1.0 } else { 0.0 })
        .collect();
    let mine = present.clone();
    group.all_reduce_sum(&mut present)?;
    let world = group.world() as f32;
    if let Some(i) = (0..params.len()).find(|&i| present[i] != mine[i] * world) {
        return Err(Error::Internal(format!(
            "data parallel: parameter {i} has a gradient on {} of {world} ranks",
            present[i]
        )));
    }
    let inv = 1.0 / world;
    let have: Vec<(Var, Tensor)> = params
        .iter()
        .filter_map(|p| grads.get(p).map(|g| (p.clone(), g.clone())))
        .collect();
    if on_device(&have, group) {
        // GPUs with NCCL: one flat device buffer, summed on the devices.
        let flat: Vec<Tensor> = have
            .iter()
            .map(|(_, g)| g.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let sum = collective::all_reduce_on_device(&Tensor::cat(&flat, 0)?, group)?;
        let mut at = 0;
        for (p, g) in have {
            let len = g.elem_count();
            grads.insert(
                &p,
                (sum.narrow(0, at, len)?.reshape(g.shape())? * inv as f64)?,
            );
            at += len;
        }
        return Ok(());
    }
    let mut flat = Vec::new();
    let mut spans = Vec::new();
    for (p, g) in have {
        let v = to_host(&g)?;
        spans.push((p, flat.len(), v.len(), g));
        flat.extend(v);
    }
    group.all_reduce_sum(&mut flat)?;
    for (p, at, len, like) in spans {
        let mean: Vec<f32> = flat[at..at + len].iter().map(|v| v * inv).collect();
        grads.insert(&p, from_host(mean, &like)?);
    }
    Ok(())
}
