//! `vssl bench model`: times a backbone's forward pass and full training step
//! (forward, backward, SGD update) on random clips, with a per-layer GFLOP/s table
//! from [`crate::ops::profile`], optionally against PyTorch running the identical
//! step (`tools/bench_torch.py`) in the same invocation, repeats interleaved.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{median, peak_rss_kib, TorchServer};
use crate::backbone::BackboneConfig;
use crate::backbone::{self, arch::parse_arch};
use crate::loss::cross_entropy;
use crate::nn::VarStore;
use crate::ops::profile;
use crate::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::train::update;
use crate::{Error, Result};

/// Classes of the benchmark's classifier (as in `tools/bench_torch.py`).
const CLASSES: usize = 10;

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub arch: String,
    pub batch: usize,
    pub frames: usize,
    pub size: usize,
    /// Timed repeats (medians are reported).
    pub reps: usize,
    /// Untimed training steps before the repeats, on each side (at least one).
    pub warmup: usize,
    /// Python with torch + torchvision to run `tools/bench_torch.py` alongside.
    pub torch: Option<PathBuf>,
    /// Where `bench_torch.py` lives.
    pub torch_script: PathBuf,
}

impl BenchOptions {
    /// Warm-up steps actually run: at least one.
    fn warmup_steps(&self) -> usize {
        self.warmup.max(1)
    }
}

/// Medians of the timed repeats, in seconds.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub forward: f64,
    pub step: f64,
    pub forward_all: Vec<f64>,
    pub step_all: Vec<f64>,
    pub peak_rss_kib: Option<u64>,
}

/// One row of the per-layer table: a kernel on one geometry, summed over its calls
/// in one profiled training step.
#[derive(Debug, Clone)]
pub struct LayerRow {
    pub op: &'static str,
    pub shape: String,
    pub calls: usize,
    pub seconds: f64,
    pub gflops: f64,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub vssl: Timing,
    pub torch: Option<Timing>,
    /// Why PyTorch was not run, when it was not.
    pub torch_skipped: Option<String>,
    pub layers: Vec<LayerRow>,
    /// Wall time of the profiled step (kernels recorded in `layers` plus the rest).
    pub profiled_step: f64,
}

/// The timed step's backward pass and SGD update (learning rate 0.01): the trainer's
/// own [`update`], so the benchmark times what training runs.
fn backward_and_step(opt: &mut Optimizer, loss: &Tensor) -> Result<()> {
    update(loss, &mut [(opt, 0.01)], 0.0)?;
    Ok(())
}

/// Runs the benchmark on `dev`.
pub fn run(o: &BenchOptions, dev: &Device) -> Result<BenchReport> {
    if o.batch == 0 || o.frames == 0 || o.size == 0 || o.reps == 0 {
        return Err(Error::BadInput(format!(
            "bench: batch, frames, size and reps must be positive, got {}, {}, {}, {}",
            o.batch, o.frames, o.size, o.reps
        )));
    }
    let cfg = BackboneConfig {
        arch: parse_arch(&o.arch)?,
        num_classes: Some(CLASSES),
        ..BackboneConfig::default()
    };
    let vs = VarStore::new(dev, 0);
    let net = backbone::build(&cfg, &vs, o.frames)?;
    let mut opt = Optimizer::new(
        OptimizerConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
        },
        vs.trainable(),
    )?;
    let x = Tensor::randn(0f32, 1f32, (o.batch, 3, o.frames, o.size, o.size), dev)?;
    let labels = Tensor::from_vec(
        (0..o.batch)
            .map(|i| (i % CLASSES) as u32)
            .collect::<Vec<_>>(),
        o.batch,
        dev,
    )?;
    let sync = |t: &Tensor| -> Result<()> {
        // Reading one value waits for asynchronous devices.
        t.flatten_all()?
            .narrow(0, 0, 1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(())
    };
    let fwd = |net: &dyn backbone::Backbone| -> Result<f64> {
        let t = Instant::now();
        let y = net.pooled(&x, true)?;
        sync(&y)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut step = |net: &dyn backbone::Backbone| -> Result<f64> {
        let t = Instant::now();
        let pooled = net.pooled(&x, true)?;
        let logits = net
            .classify(&pooled)
            .ok_or_else(|| Error::Internal("bench: backbone built without fc".into()))??;
        let loss = cross_entropy(&logits, &labels)?;
        backward_and_step(&mut opt, &loss)?;
        sync(&loss)?;
        Ok(t.elapsed().as_secs_f64())
    };

    let (mut torch, torch_skipped) = match &o.torch {
        None => (
            None,
            Some("no --torch PYTHON given (or VSSL_TORCH_PYTHON set)".to_string()),
        ),
        Some(py) => match TorchServer::start(
            py,
            &o.torch_script,
            &[
                "--arch".into(),
                o.arch.clone(),
                "--batch".into(),
                o.batch.to_string(),
                "--frames".into(),
                o.frames.to_string(),
                "--size".into(),
                o.size.to_string(),
                "--warmup".into(),
                o.warmup_steps().to_string(),
                "--device".into(),
                super::torch_device(dev),
            ],
        ) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };

    // Warm-up (torch's before it says `ready`).
    for _ in 0..o.warmup_steps() {
        step(net.as_ref())?;
    }
    let (mut vf, mut vstep, mut tf, mut tstep) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.reps {
        vf.push(fwd(net.as_ref())?);
        if let Some(t) = torch.as_mut() {
            tf.push(t.ask("fwd")?);
        }
        vstep.push(step(net.as_ref())?);
        if let Some(t) = torch.as_mut() {
            tstep.push(t.ask("step")?);
        }
    }
    let vssl_rss = peak_rss_kib();

    // One profiled step for the per-layer table.
    profile::take();
    profile::enable(true);
    let profiled_step = step(net.as_ref());
    profile::enable(false);
    let profiled_step = profiled_step?;
    let mut layers: Vec<LayerRow> = Vec::new();
    for r in profile::take() {
        match layers
            .iter_mut()
            .find(|l| l.op == r.op && l.shape == r.shape)
        {
            Some(l) => {
                l.calls += 1;
                l.seconds += r.seconds;
                l.gflops += r.flops;
            }
            None => layers.push(LayerRow {
                op: r.op,
                shape: r.shape,
                calls: 1,
                seconds: r.seconds,
                gflops: r.flops,
            }),
        }
    }
    for l in &mut layers {
        l.gflops /= 1e9;
    }

    let torch = match torch.as_mut() {
        Some(t) => {
            let rss = t.ask("rss").ok().map(|k| k as u64);
            Some(Timing {
                forward: median(&tf),
                step: median(&tstep),
                forward_all: tf,
                step_all: tstep,
                peak_rss_kib: rss,
            })
        }
        None => None,
    };
    Ok(BenchReport {
        vssl: Timing {
            forward: median(&vf),
            step: median(&vstep),
            forward_all: vf,
            step_all: vstep,
            peak_rss_kib: vssl_rss,
        },
        torch,
        torch_skipped,
        layers,
        profiled_step,
    })
}

impl BenchReport {
    /// The human-readable report `vssl bench model` prints.
    pub fn render(&self, o: &BenchOptions) -> String {
        let mut s = String::new();
        let ms = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.0}", x * 1e3))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rss =
            |r: Option<u64>| r.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
        s += &format!(
            "bench {} batch {} clip 3x{}x{}x{}, {} repeats after {} warm-up steps (medians; all in ms)\n",
            o.arch,
            o.batch,
            o.frames,
            o.size,
            o.size,
            o.reps,
            o.warmup_steps()
        );
        let t = &self.vssl;
        s += &format!(
            "vssl : forward {:.0} ms [{}]  step {:.0} ms [{}]  peak RSS {}\n",
            t.forward * 1e3,
            ms(&t.forward_all),
            t.step * 1e3,
            ms(&t.step_all),
            rss(t.peak_rss_kib)
        );
        match (&self.torch, &self.torch_skipped) {
            (Some(p), _) => {
                s += &format!(
                    "torch: forward {:.0} ms [{}]  step {:.0} ms [{}]  peak RSS {}\n",
                    p.forward * 1e3,
                    ms(&p.forward_all),
                    p.step * 1e3,
                    ms(&p.step_all),
                    rss(p.peak_rss_kib)
                );
                s += &format!(
                    "ratio vssl/torch: forward {:.2}  step {:.2}\n",
                    t.forward / p.forward,
                    t.step / p.step
                );
            }
            (None, Some(why)) => s += &format!("torch: skipped: {why}\n"),
            (None, None) => {}
        }
        let total: f64 = self.layers.iter().map(|l| l.seconds).sum();
        s += &format!(
            "per-layer kernels of one profiled step ({:.0} ms wall, {:.0} ms in these kernels):\n",
            self.profiled_step * 1e3,
            total * 1e3
        );
        s += &format!(
            "  {:<14} {:>5} {:>9} {:>8}  shape\n",
            "op", "calls", "ms", "GFLOP/s"
        );
        for l in &self.layers {
            let rate = if l.gflops > 0.0 {
                format!("{:.1}", l.gflops / l.seconds)
            } else {
                "-".into()
            };
            s += &format!(
                "  {:<14} {:>5} {:>9.1} {:>8}  {}\n",
                l.op,
                l.calls,
                l.seconds * 1e3,
                rate,
                l.shape
            );
        }
        s
    }
}
