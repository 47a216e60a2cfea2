//! Ranks on GPUs summing device buffers with NCCL (the `nccl` feature).
//!
//! Why it exists: [`super::SocketGroup`] carries every gradient through host memory
//! and one TCP hub, so with N GPUs each step copies the whole gradient to the host
//! and back and the hub adds N buffers in turn. NCCL sums on the devices over
//! NVLink/PCIe/InfiniBand with its ring and tree algorithms. The socket group stays
//! underneath for what is small or host-side (the gradient-presence check, f64
//! statistics from the host, broadcasts at start, the logged scalars) and is how
//! the ranks meet: rank 0 creates NCCL's unique id and writes it to a file in the
//! run's meeting directory (`.ranks/`, which every rank already reaches, across
//! nodes under Slurm too), the others read it after a host barrier.
//!
//! NCCL does not add the ranks' buffers in rank order, so a GPU run's gradients are
//! not bit-identical to one process's; the CPU groups keep that guarantee.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaDevice;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, Device, Layout};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};

use super::{Collective, SocketGroup};
use crate::{Error, Result};

/// A [`SocketGroup`] whose device sums go through an NCCL communicator.
pub struct NcclGroup {
    host: SocketGroup,
    comm: Mutex<Shared>,
}

/// The communicator, used only under the group's lock.
struct Shared(Comm);
// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do
// not overlap; the mutex serialises them.
unsafe impl Send for Shared {}

impl NcclGroup {
    /// Builds the communicator of `host`'s ranks on `device` (this rank's GPU).
    /// Every rank of `host` must call it; `dir` is the meeting directory `host` was
    /// joined in and `token` the run's token.
    pub fn new(host: SocketGroup, dir: &Path, token: &str, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(Error::BadInput(format!(
                "NCCL needs a CUDA device, got {device:?}"
            )));
        };
        let (rank, world) = (host.rank(), host.world());
        let file = id_file(dir, token);
        let nccl = |what: &str, e: cudarc::nccl::result::NcclError| {
            Error::Internal(format!(
                "NCCL {what} (rank {rank} of {world}): {e:?}; VSSL_NCCL=0 sums the gradients \
                 through host memory instead"
            ))
        };
        if rank == 0 {
            let id = Id::new().map_err(|e| nccl("ncclGetUniqueId", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            crate::io::write_atomic(&file, &bytes)?;
        }
        // The id file exists once every rank has passed this.
        host.all_reduce_sum(&mut [0.0])?;
        let bytes = std::fs::read(&file)
            .map_err(|e| Error::Internal(format!("NCCL id file {}: {e}", file.display())))?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                Error::Internal(format!(
                    "NCCL id file {}: {} bytes, expected 128",
                    file.display(),
                    bytes.len()
                ))
            })?;
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world, Id::uninit(internal))
            .map_err(|e| nccl("ncclCommInitRank", e))?;
        host.all_reduce_sum(&mut [0.0])?;
        if rank == 0 {
            let _ = std::fs::remove_file(&file);
        }
        tracing::info!("rank {rank} of {world}: gradients are summed by NCCL on {device:?}");
        Ok(Self {
            host,
            comm: Mutex::new(Shared(comm)),
        })
    }
}

fn id_file(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("nccl-{}.id", super::socket::file_token(token)))
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.host.all_reduce_sum(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.host.all_reduce_sum_f64(buf)
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.host.broadcast(buf, root)
    }
    fn reduces_on_device(&self) -> bool {
        true
    }
    fn all_reduce_device(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<CudaStorage> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL all-reduce takes a contiguous tensor");
        };
        let comm = self
            .comm
            .lock()
            .map_err(|_| candle_core::Error::Msg("NCCL communicator poisoned".into()))?;
        match &s.slice {
            CudaStorageSlice::F32(v) => sum(&comm.0, v, (a, b), &s.device),
            CudaStorageSlice::F64(v) => sum(&comm.0, v, (a, b), &s.device),
            _ => candle_core::bail!("NCCL all-reduce takes f32 or f64, got {:?}", s.dtype()),
        }
    }
}

/// Elements `a..b` of `v` summed over the ranks, into a new buffer.
fn sum<T>(
    comm: &Comm,
    v: &CudaSlice<T>,
    (a, b): (usize, usize),
    dev: &CudaDevice,
) -> candle_core::Result<CudaStorage>
where
    T: NcclType + DeviceRepr + ValidAsZeroBits + candle_core::cuda::CudaDType,
{
    let mut out = dev.alloc_zeros::<T>(b - a)?;
    comm.all_reduce(&v.slice(a..b), &mut out, &ReduceOp::Sum)
        .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
