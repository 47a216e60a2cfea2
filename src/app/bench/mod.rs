//! `vssl bench`: speed measurements against reference implementations, kept out of
//! the library modules because they start other programs (Python with PyTorch, the
//! ffmpeg CLI) and exist only to print a report.
//!
//! - [`model`]: a backbone's forward pass and training step (`vssl bench model`);
//! - [`conv`]: one conv3d layer (`vssl bench conv3d`);
//! - [`data`]: the data pipeline against the ffmpeg CLI (`vssl bench data`);
//! - [`decode`]: vssl's side of `tools/bench_decoders.py` (`vssl bench decode`);
//! - [`ops`]: every 3D op on a device against the CPU kernels (`vssl bench ops`).
//!
//! What they share lives here: the [`median`] every figure is reported as, the peak
//! RSS probe and the PyTorch server process.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::{Error, Result};

pub mod conv;
#[cfg(feature = "video")]
pub mod data;
#[cfg(feature = "video")]
pub mod decode;
pub mod model;
pub mod ops;

pub use conv::{run_conv, ConvBenchOptions};
pub use model::{run, BenchOptions, BenchReport, LayerRow, Timing};
pub use ops::run_ops;

/// The median of `v` (the mean of the two middle values for an even count; NaN when
/// empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Peak resident set size of this process in KiB (Linux `ru_maxrss`).
#[cfg(unix)]
pub fn peak_rss_kib() -> Option<u64> {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut ru) == 0).then_some(ru.ru_maxrss as u64)
    }
}
#[cfg(not(unix))]
pub fn peak_rss_kib() -> Option<u64> {
    None
}

/// The PyTorch side: `bench_torch.py --serve` answering one command per line.
/// PyTorch's name for `dev`, so the peer runs where vssl runs.
pub(crate) fn torch_device(dev: &candle_core::Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("mps:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
    }
}

pub(crate) struct TorchServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl TorchServer {
    pub(crate) fn start(python: &PathBuf, script: &PathBuf, args: &[String]) -> Result<Self> {
        let err = |m: String| Error::BadInput(format!("bench: torch ({}): {m}", python.display()));
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("cannot start {}: {e}", script.display())))?;
        let stdin = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| err("no stdout".into()))?);
        let mut s = Self {
            child,
            stdin,
            stdout,
        };
        let first = s.line()?;
        if first != "ready" {
            return Err(err(format!("expected `ready`, got {first:?}")));
        }
        Ok(s)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        self.stdout
            .read_line(&mut l)
            .map_err(|e| Error::Internal(format!("bench: reading torch's answer: {e}")))?;
        if l.is_empty() {
            return Err(Error::BadInput(
                "bench: the torch process exited early (see its stderr above)".into(),
            ));
        }
        Ok(l.trim().to_string())
    }

    pub(crate) fn ask(&mut self, cmd: &str) -> Result<f64> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| Error::Internal(format!("bench: writing to torch: {e}")))?;
        let l = self.line()?;
        l.parse()
            .map_err(|_| Error::Internal(format!("bench: torch answered {l:?} to {cmd}")))
    }
}

impl Drop for TorchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
