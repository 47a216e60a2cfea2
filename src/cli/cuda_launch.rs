//! The CPU build of `vssl` as the launcher of a CUDA build installed beside it.
//!
//! Why: candle 0.11 links CUDA's libraries at build time (cudarc's
//! `dynamic-linking`), so a CUDA build cannot even start where the NVIDIA driver is
//! missing (a cluster's login node, CI, a laptop): the dynamic loader stops it before
//! `main`, and neither `--device auto` nor a clear error can happen. Installed as
//! `vssl` (CPU build) with `vssl-cuda` (`tools/cuda-build.sh`) in the same
//! directory, `vssl` asks the driver itself (`dlopen("libcuda.so.1")`, `cuInit`,
//! `cuDeviceGetCount`) and hands the whole command line to `vssl-cuda` only when a
//! GPU answers and the command does not say `--device cpu`. Otherwise it runs on
//! the CPU: `auto` falls back and says why, `cuda:N` is refused naming the reason.

use std::ffi::{CStr, CString, OsString};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The CUDA build's file name, beside this binary.
const CUDA_BINARY: &str = "vssl-cuda";

/// Why no GPU is used although a CUDA build is installed (set when one is).
static UNAVAILABLE: OnceLock<String> = OnceLock::new();

/// Why `--device cuda` cannot be served by this process: the driver probe's answer
/// when `vssl-cuda` is installed, `None` when it is not (then the build simply has no
/// CUDA support).
pub fn cuda_unavailable() -> Option<&'static str> {
    UNAVAILABLE.get().map(String::as_str)
}

/// Replaces this process with `vssl-cuda` when that is installed beside it, a GPU
/// answers and `args` (the command line, program name first) do not ask for the CPU.
/// Returns (doing nothing) in every other case, and when this binary is itself a
/// CUDA build.
pub fn maybe_exec_cuda(args: &[OsString]) {
    if cfg!(feature = "cuda") || wants_cpu(args) {
        return;
    }
    let Some(cuda) = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join(CUDA_BINARY)))
        .filter(|p| p.is_file())
    else {
        return;
    };
    match probe_driver() {
        Ok(0) => {
            let _ = UNAVAILABLE.set(format!(
                "the NVIDIA driver reports no GPU, so {} is not used",
                cuda.display()
            ));
        }
        Ok(_) => exec(&cuda, args),
        Err(why) => {
            let _ = UNAVAILABLE.set(format!(
                "no NVIDIA driver answered ({why}), so {} is not used",
                cuda.display()
            ));
        }
    }
}

/// `--device cpu` (or `--device=cpu`) anywhere on the command line.
fn wants_cpu(args: &[OsString]) -> bool {
    args.windows(2).any(|w| w[0] == "--device" && w[1] == "cpu")
        || args.iter().any(|a| a == "--device=cpu")
}

#[cfg(unix)]
fn exec(cuda: &PathBuf, args: &[OsString]) {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(cuda).args(&args[1..]).exec();
    // Only reached when exec failed: say so and carry on on the CPU.
    let _ = UNAVAILABLE.set(format!("{} could not be started: {err}", cuda.display()));
    tracing::warn!(
        "{} could not be started ({err}); running on the CPU",
        cuda.display()
    );
}

#[cfg(not(unix))]
fn exec(cuda: &PathBuf, _args: &[OsString]) {
    let _ = UNAVAILABLE.set(format!("{} is only launched on Unix", cuda.display()));
}

/// The number of GPUs the driver reports, or why it could not be asked. The library
/// is `VSSL_CUDA_DRIVER` when set (tests point it at a stand-in), else the driver's
/// `libcuda.so.1`.
fn probe_driver() -> Result<i32, String> {
    let lib = std::env::var("VSSL_CUDA_DRIVER").unwrap_or_else(|_| "libcuda.so.1".into());
    let name = CString::new(lib.clone()).map_err(|_| format!("bad library name {lib:?}"))?;
    // SAFETY: dlopen/dlsym/dlerror with NUL-terminated names; the two functions are
    // called with the signatures the CUDA driver API gives them (`CUresult
    // cuInit(unsigned)`, `CUresult cuDeviceGetCount(int *)`), and the handle stays
    // open for the rest of the process (the driver is not meant to be unloaded).
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(dl_error(&lib));
        }
        let sym = |s: &CStr| {
            let p = libc::dlsym(handle, s.as_ptr());
            (!p.is_null()).then_some(p).ok_or_else(|| dl_error(&lib))
        };
        let init: extern "C" fn(u32) -> i32 = std::mem::transmute(sym(c"cuInit")?);
        let count: extern "C" fn(*mut i32) -> i32 = std::mem::transmute(sym(c"cuDeviceGetCount")?);
        let rc = init(0);
        if rc != 0 {
            return Err(format!("cuInit failed with CUDA error {rc}"));
        }
        let mut n = 0i32;
        let rc = count(&mut n);
        if rc != 0 {
            return Err(format!("cuDeviceGetCount failed with CUDA error {rc}"));
        }
        Ok(n)
    }
}

/// The dynamic loader's last error, or a generic one naming `lib`.
unsafe fn dl_error(lib: &str) -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the loader.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        format!("{lib}: not loadable")
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}
