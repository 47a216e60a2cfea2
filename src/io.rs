//! Safetensors files written atomically and read back with clear errors.
//!
//! candle's own `safetensors::save` writes no `__metadata__` (where vssl keeps the
//! recipe, step and format tags), truncates the destination in place (a crash
//! mid-write leaves a torn checkpoint), and its loader reports failures without
//! the file name. This leaf module (below every layer that saves or loads
//! weights: training, evaluation, import, extraction) writes through a temporary sibling file that is
//! fsynced and renamed over the destination, and reads with errors that name the
//! path and never panic on truncated or corrupt input.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use crate::{Error, Result};

/// A tensor already copied to host memory as little-endian bytes.
struct HostTensor {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_host(path: &Path, name: &str, t: &Tensor) -> Result<HostTensor> {
    let t = t.detach().to_device(&Device::Cpu)?;
    let mut bytes = match t.dtype() {
        // candle's own safetensors view copies the elements out in native byte order.
        DType::U8
        | DType::U32
        | DType::I16
        | DType::I32
        | DType::I64
        | DType::F16
        | DType::BF16
        | DType::F32
        | DType::F64
        | DType::F8E4M3 => View::data(&&t).into_owned(),
        other => {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}`: dtype {other:?} cannot be saved"),
            ));
        }
    };
    // safetensors is little-endian: swap each element's bytes on big-endian hosts.
    if cfg!(target_endian = "big") {
        let size = t.dtype().size_in_bytes();
        bytes.chunks_exact_mut(size).for_each(|e| e.reverse());
    }
    Ok(HostTensor {
        dtype: t.dtype().into(),
        shape: t.dims().to_vec(),
        bytes,
    })
}

/// `<path>.tmp-<pid>`, in the same directory as `path`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `tensors` (any dtype candle can store; copied to the CPU) and string
/// `metadata` (stored as `__metadata__`; omitted when empty, nothing added) as a
/// safetensors file: the bytes go to `<path>.tmp-<pid>` in the same directory,
/// which is fsynced, renamed over `path`, and the directory fsynced. A crash at
/// any moment leaves either the old file or the new one at `path`, never a torn
/// one. Duplicate tensor names are an error.
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    write_tensors(path, tensors, metadata, false)
}

/// [`write_safetensors_atomic`] for checkpoints: also stores [`tensors_checksum`]
/// under [`CHECKSUM_KEY`], computed from the bytes being written.
pub fn write_checkpoint_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    write_tensors(path, tensors, metadata, true)
}

fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
    checksum: bool,
) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::checkpoint(path, "not a file path"));
    }
    let mut host = BTreeMap::new();
    for (name, t) in tensors {
        if host
            .insert(name.as_str(), to_host(path, name, t)?)
            .is_some()
        {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}` given twice"),
            ));
        }
    }
    let mut metadata = metadata.clone();
    if checksum {
        metadata.insert(CHECKSUM_KEY.to_string(), host_checksum(&host));
    }
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    let bytes = safetensors::serialize(host.iter().map(|(k, v)| (*k, v)), meta)
        .map_err(|e| Error::checkpoint(path, format!("cannot serialize: {e}")))?;
    drop(host);

    write_bytes(path, &bytes, true)
}

/// Writes `bytes` to `path` atomically, like [`write_safetensors_atomic`] (temp file,
/// fsync, rename, directory fsync), for small text files (JSON, refs, cards). Not
/// counted by the crash-injection hook.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_bytes(path, bytes, false)
}

fn write_bytes(path: &Path, bytes: &[u8], crash_hook: bool) -> Result<()> {
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        #[cfg(feature = "crash-hook")]
        if crash_hook && crash_test::kill_now() {
            // Crash test: half the bytes reach the disk, then the process dies.
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.sync_all()?;
            crash_test::sigkill_self();
        }
        #[cfg(not(feature = "crash-hook"))]
        let _ = crash_hook;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(path)
}

/// The metadata key holding [`tensors_checksum`] in checkpoints.
pub const CHECKSUM_KEY: &str = "tensors_sha256";

/// sha256 over every tensor's name, dtype, shape and little-endian bytes, in name
/// order: stored in checkpoints so that a file whose bytes changed after it was
/// written (a torn copy, a flipped bit) is detected even when it still parses.
pub fn tensors_checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<String> {
    let mut host = BTreeMap::new();
    for (name, t) in tensors {
        host.insert(name, to_host(Path::new(name), name, t)?);
    }
    Ok(host_checksum(&host))
}

/// The checksum of host tensors, in name order (a `BTreeMap` iterates sorted).
fn host_checksum(host: &BTreeMap<&str, HostTensor>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, t) in host {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype, t.shape).as_bytes());
        h.update((t.bytes.len() as u64).to_le_bytes());
        h.update(&t.bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes the rename durable: fsync the directory holding `path` (Unix only).
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The `__metadata__` map of a safetensors file, read from its header alone
/// (empty when absent); errors name the path.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let corrupt =
        |what: &str| Error::checkpoint(path, format!("not a valid safetensors file: {what}"));
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| corrupt("no header length"))?;
    let n = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if n > 100_000_000 {
        return Err(corrupt("header length too large"));
    }
    if n > file_len.saturating_sub(8) {
        return Err(corrupt("truncated header"));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head)
        .map_err(|_| corrupt("truncated header"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&head).map_err(|e| corrupt(&e.to_string()))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads every tensor of a safetensors file onto `device`, plus its
/// `__metadata__` map (empty when absent). A missing or unreadable file, a
/// truncated or corrupt one, or a dtype candle cannot hold is an error naming
/// the path; never panics.
pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |e: safetensors::SafeTensorError| {
        Error::checkpoint(path, format!("not a valid safetensors file: {e}"))
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let st = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            StDtype::U8 => DType::U8,
            StDtype::U32 => DType::U32,
            StDtype::I16 => DType::I16,
            StDtype::I32 => DType::I32,
            StDtype::I64 => DType::I64,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F32 => DType::F32,
            StDtype::F64 => DType::F64,
            StDtype::F8_E4M3 => DType::F8E4M3,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}`: unsupported dtype {other:?}"),
                ));
            }
        };
        let expected = view
            .shape()
            .iter()
            .try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(d));
        if expected != Some(view.data().len()) {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{name}`: {} bytes for shape {:?} of {dtype:?}",
                    view.data().len(),
                    view.shape()
                ),
            ));
        }
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)
            .map_err(|e| Error::checkpoint(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name.to_string(), t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Fault injection for crash-safety tests (cargo feature `crash-hook` only): with
/// `VSSL_CRASH_AT_WRITE=N` in the environment, the process kills itself with SIGKILL
/// halfway through its N-th atomic write (1-based). Unset, this costs one relaxed
/// atomic increment per write.
#[cfg(feature = "crash-hook")]
mod crash_test {
    use std::sync::atomic::{AtomicU64, Ordering};

    static WRITES: AtomicU64 = AtomicU64::new(0);

    pub fn kill_now() -> bool {
        let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
        wanted("VSSL_CRASH_AT_WRITE", n)
    }

    pub fn wanted(var: &str, n: u64) -> bool {
        std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) == Some(n)
    }

    pub fn sigkill_self() -> ! {
        #[cfg(unix)]
        // SAFETY: raising a signal has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
        std::process::abort()
    }
}

/// A named crash point for the SIGKILL tests: with the `crash-hook` feature and
/// `<var>=<n>` in the environment, the process kills itself with SIGKILL here, so a
/// test can interrupt a run at an exact moment (`VSSL_CRASH_AT_STEP`: right after
/// step `n`'s update, before anything of it is written; `VSSL_CRASH_AT_CACHE_VIDEO`:
/// after the `n`-th video of a cache build reached the partial frame file). Without
/// the feature it compiles to nothing.
#[inline]
pub fn crash_point(var: &str, n: u64) {
    #[cfg(feature = "crash-hook")]
    if crash_test::wanted(var, n) {
        crash_test::sigkill_self();
    }
    #[cfg(not(feature = "crash-hook"))]
    let _ = (var, n);
}
