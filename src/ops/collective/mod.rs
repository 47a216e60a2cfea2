//! Collectives between the ranks of a data-parallel run: the all-reduce that sums
//! gradients and synchronised batch-norm statistics, and the broadcast that starts
//! every rank from rank 0's weights.
//!
//! Why a trait: the training loop and batch norm need only "sum this over the
//! ranks" and "take rank 0's copy", whatever carries it. [`ThreadGroup`] carries it
//! between threads of one process on the CPU (the stand-in the data-parallel tests
//! run on); [`SocketGroup`] between processes over TCP, one hub at rank 0 (`vssl
//! train --ranks N`, on one machine or across a Slurm allocation; on GPUs it carries
//! the buffers through host memory); with the `nccl` feature, `NcclGroup` sums CUDA
//! buffers on the devices and keeps a socket group for the host-side calls.
//!
//! Every reduction sums the ranks' buffers in rank order, so every rank gets the
//! same bits and a run is deterministic whatever the threads' timing.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::Result;

#[cfg(feature = "nccl")]
mod nccl;
mod socket;
mod thread;

#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use socket::SocketGroup;
pub use thread::ThreadGroup;

/// One rank's handle on a group of `world` ranks. Every rank must make the same
/// calls in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This rank, `0..world`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum of all ranks' `buf`,
    /// added in rank order.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] in double precision (statistics).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank by `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Whether [`Collective::all_reduce_device`] sums f32 and f64 CUDA buffers on
    /// the devices (NCCL); otherwise device tensors travel through host memory.
    fn reduces_on_device(&self) -> bool {
        false
    }
    /// The sum over the ranks of the contiguous elements `l` addresses in `s`, as a
    /// new device buffer; only called where [`Collective::reduces_on_device`].
    fn all_reduce_device(
        &self,
        _s: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> candle_core::Result<candle_core::CudaStorage> {
        candle_core::bail!("this group sums through host memory only")
    }
}

/// Whether `t` can be summed by `group` on its device.
pub(crate) fn on_device(t: &Tensor, group: &dyn Collective) -> bool {
    group.reduces_on_device()
        && t.device().is_cuda()
        && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// The sum of `t` over `group`'s ranks on its device, not differentiable (the
/// gradient all-reduce of the training loop); only where [`on_device`].
pub(crate) fn all_reduce_on_device(t: &Tensor, group: &dyn Collective) -> Result<Tensor> {
    Ok(t.contiguous()?.apply_op1_no_bwd(&DeviceSum(group))?)
}

struct DeviceSum<'a>(&'a dyn Collective);

impl CustomOp1 for DeviceSum<'_> {
    fn name(&self) -> &'static str {
        "all-reduce-device"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("all-reduce-device: a CPU tensor")
    }
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((self.0.all_reduce_device(s, l)?, l.shape().clone()))
    }
}

/// Sums `t` over the ranks of `group`, differentiably: the gradient of a sum over
/// ranks with respect to one rank's input is the sum over ranks of the upstream
/// gradients, so the backward pass is the same all-reduce. f32 or f64, on any
/// device (through host memory off the CPU; the copies are differentiable too).
pub fn all_reduce(t: &Tensor, group: &Arc<dyn Collective>) -> Result<Tensor> {
    if on_device(t, group.as_ref()) {
        return Ok(t.contiguous()?.apply_op1(AllReduce(group.clone()))?);
    }
    if !t.device().is_cpu() {
        let host = all_reduce(&t.to_device(&candle_core::Device::Cpu)?, group)?;
        return Ok(host.to_device(t.device())?);
    }
    Ok(t.contiguous()?.apply_op1(AllReduce(group.clone()))?)
}

#[derive(Clone)]
struct AllReduce(Arc<dyn Collective>);

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "all-reduce"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("all-reduce takes a contiguous tensor");
        };
        let out = match s {
            CpuStorage::F32(v) => {
                let mut out = v[a..b].to_vec();
                self.0
                    .all_reduce_sum(&mut out)
                    .map(|_| CpuStorage::F32(out))
            }
            CpuStorage::F64(v) => {
                let mut out = v[a..b].to_vec();
                self.0
                    .all_reduce_sum_f64(&mut out)
                    .map(|_| CpuStorage::F64(out))
            }
            _ => candle_core::bail!("all-reduce takes an f32 or f64 tensor"),
        };
        Ok((out.map_err(candle_core::Error::wrap)?, l.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        DeviceSum(self.0.as_ref()).cuda_fwd(s, l)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(self.clone())?))
    }
}

/// The rows (dim 0) of `t` on every rank, concatenated in rank order: with
/// contiguous shards, the whole batch's rows in batch order. Differentiable: it is
/// the all-reduce of `t` placed at this rank's rows of zeros, so each rank's rows
/// get the sum over ranks of their gradients. Every rank must hold as many rows.
pub fn all_gather_rows(t: &Tensor, group: &Arc<dyn Collective>) -> Result<Tensor> {
    let (world, rank) = (group.world(), group.rank());
    if world == 1 {
        return Ok(t.clone());
    }
    let n = t.dim(0)?;
    let placed = t.pad_with_zeros(0, rank * n, (world - 1 - rank) * n)?;
    all_reduce(&placed, group)
}

/// This thread's data-parallel context while a rank computes its loss: the group,
/// and whether batch norm synchronises over it.
#[derive(Clone)]
struct Scope {
    group: Arc<dyn Collective>,
    sync_bn: bool,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// While alive, this thread computes as `group`'s rank: methods whose loss couples
/// the samples of a batch (contrastive negatives, a memory bank) gather them from
/// every rank ([`rank_group`]), and with `sync_bn` batch norm in training mode
/// normalises with statistics over every rank's batch.
pub struct ParallelScope {
    previous: Option<Scope>,
}

impl ParallelScope {
    pub fn enter(group: Arc<dyn Collective>, sync_bn: bool) -> Self {
        let previous = SCOPE.with(|s| s.borrow_mut().replace(Scope { group, sync_bn }));
        Self { previous }
    }

    /// Batch norm back to this rank's own statistics while alive, for layers that
    /// already see every rank's rows (after [`all_gather_rows`]): synchronising those
    /// would count each row once per rank.
    pub fn local_batch_norm() -> Self {
        let previous = SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            let previous = s.clone();
            if let Some(sc) = s.as_mut() {
                sc.sync_bn = false;
            }
            previous
        });
        Self { previous }
    }
}

impl Drop for ParallelScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// The data-parallel group this thread computes in, if any (more than one rank).
pub fn rank_group() -> Option<Arc<dyn Collective>> {
    SCOPE
        .with(|s| s.borrow().as_ref().map(|sc| sc.group.clone()))
        .filter(|g| g.world() > 1)
}

/// The group batch norm synchronises over on this thread, if any (and more than one rank).
pub(crate) fn sync_bn_group() -> Option<Arc<dyn Collective>> {
    SCOPE
        .with(|s| {
            s.borrow()
                .as_ref()
                .filter(|sc| sc.sync_bn)
                .map(|sc| sc.group.clone())
        })
        .filter(|g| g.world() > 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Runs `f(rank handle)` on one thread per rank and collects the results in rank order.
    pub(crate) fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(Arc<dyn Collective>) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = ThreadGroup::new(world)
            .unwrap()
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(Arc::new(g)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_broadcast_copies_the_root() {
        let out = on_ranks(3, |g| {
            let r = g.rank() as f32;
            let mut a = vec![r, 10.0 * r, 1e8 * (r - 1.0), 1.0];
            g.all_reduce_sum(&mut a).unwrap();
            let mut b = vec![r; 2];
            g.broadcast(&mut b, 2).unwrap();
            (a, b)
        });
        // ((1e8·-1 + 0) + 1) + ... in rank order: -1e8 + 0 + 1e8 = 0 exactly.
        let want = vec![3.0, 30.0, ((-1e8f32 + 0.0) + 1e8), 3.0];
        for (a, b) in out {
            assert_eq!(a, want);
            assert_eq!(b, vec![2.0, 2.0]);
        }
    }

    #[test]
    fn a_rank_that_leaves_is_an_error_for_the_others_not_a_hang() {
        let out = on_ranks(2, |g| {
            if g.rank() == 1 {
                return Ok(()); // drops its handle without joining the collective
            }
            let mut a = vec![1.0];
            g.all_reduce_sum(&mut a)
        });
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("rank 1 left the group"), "{e}");
        // Buffers of different lengths are an error on every rank.
        let out = on_ranks(2, |g| g.all_reduce_sum(&mut vec![0.0; 1 + g.rank()]));
        assert!(out.iter().all(|r| r.is_err()));
    }

    #[test]
    fn the_differentiable_all_reduce_sums_values_and_gradients() {
        // Rank r holds x_r; y = sum_r x_r on every rank; rank r's loss is (r+1)·Σ y.
        // d(Σ_r loss_r)/dx_q = Σ_r (r+1) = 3 for each element on a world of 2.
        let out = on_ranks(2, |g| {
            let r = g.rank() as f32;
            let x = Var::from_vec(vec![r, r + 1.0], 2, &Device::Cpu).unwrap();
            let y = all_reduce(x.as_tensor(), &g).unwrap();
            let loss = (y.sum_all().unwrap() * (r as f64 + 1.0)).unwrap();
            let grads = loss.backward().unwrap();
            (
                y.to_vec1::<f32>().unwrap(),
                grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            )
        });
        for (y, gx) in out {
            assert_eq!(y, vec![1.0, 3.0]);
            assert_eq!(gx, vec![3.0, 3.0]);
        }
    }
}
