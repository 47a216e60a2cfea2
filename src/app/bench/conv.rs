//! `vssl bench conv3d`: one conv3d layer's forward and forward + backward times on
//! random data, optionally against PyTorch's `nn.Conv3d` in the same run.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::{median, TorchServer};
use crate::Result;

/// One convolution layer to benchmark (`vssl bench conv3d`).
#[derive(Debug, Clone)]
pub struct ConvBenchOptions {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub frames: usize,
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub reps: usize,
    pub torch: Option<PathBuf>,
    pub torch_script: PathBuf,
}

/// Times one conv3d layer: forward, and forward + backward (input and weight
/// gradients), against PyTorch's `nn.Conv3d` when `torch` is given; returns the
/// printable report.
pub fn run_conv(o: &ConvBenchOptions, dev: &Device) -> Result<String> {
    use crate::ops::conv3d::{conv3d, Conv3dConfig};
    let sizes = [
        ("--batch", o.batch),
        ("--in", o.cin),
        ("--out", o.cout),
        ("--frames", o.frames),
        ("--size", o.size),
        ("--kernel", o.kernel),
        ("--stride", o.stride),
        ("--reps", o.reps),
    ];
    if let Some((flag, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(crate::Error::BadInput(format!(
            "bench conv3d: {flag} must be at least 1"
        )));
    }
    let (span, padded) = (o.kernel, o.frames.min(o.size) + 2 * o.pad);
    if span > padded {
        return Err(crate::Error::BadInput(format!(
            "bench conv3d: a {span}-wide kernel does not fit a {}x{s}x{s} input padded by {}",
            o.frames,
            o.pad,
            s = o.size
        )));
    }
    let cfg = Conv3dConfig {
        stride: [o.stride; 3],
        padding: [o.pad; 3],
        dilation: [1; 3],
    };
    let x = candle_core::Var::from_tensor(&Tensor::randn(
        0f32,
        1f32,
        (o.batch, o.cin, o.frames, o.size, o.size),
        dev,
    )?)?;
    let w = candle_core::Var::from_tensor(&Tensor::randn(
        0f32,
        0.05f32,
        (o.cout, o.cin, o.kernel, o.kernel, o.kernel),
        dev,
    )?)?;
    let out = crate::backbone::norm::out_len(o.size, o.kernel, o.stride, o.pad, 1);
    let out_t = crate::backbone::norm::out_len(o.frames, o.kernel, o.stride, o.pad, 1);
    let flops = 2.0 * (o.batch * o.cout * out_t * out * out * o.cin * o.kernel.pow(3)) as f64;
    let sync = |t: &Tensor| -> Result<()> {
        t.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        Ok(())
    };
    let fwd = || -> Result<f64> {
        let t = Instant::now();
        let y = conv3d(&x.as_tensor().detach(), &w.as_tensor().detach(), None, &cfg)?;
        sync(&y)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let both = || -> Result<f64> {
        let t = Instant::now();
        let y = conv3d(x.as_tensor(), w.as_tensor(), None, &cfg)?;
        let g = y.sum_all()?.backward()?;
        if let Some(dx) = g.get(x.as_tensor()) {
            sync(dx)?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let mut torch = match &o.torch {
        Some(py) => Some(TorchServer::start(
            py,
            &o.torch_script,
            &[
                "--batch".into(),
                o.batch.to_string(),
                "--frames".into(),
                o.frames.to_string(),
                "--size".into(),
                o.size.to_string(),
                "--conv".into(),
                format!("{},{},{},{},{}", o.cin, o.cout, o.kernel, o.stride, o.pad),
                "--device".into(),
                super::torch_device(dev),
            ],
        )?),
        None => None,
    };
    both()?;
    let (mut vf, mut vb, mut tf, mut tb) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.reps {
        vf.push(fwd()?);
        if let Some(t) = torch.as_mut() {
            tf.push(t.ask("fwd")?);
        }
        vb.push(both()?);
        if let Some(t) = torch.as_mut() {
            tb.push(t.ask("conv")?);
        }
    }
    let gf = |s: f64, mult: f64| flops * mult / s / 1e9;
    let mut s =
        format!(
        "conv3d [{},{},{},{},{}] -> {} k{} s{} p{}: {:.2} GFLOP forward, {} repeats (medians)\n",
        o.batch, o.cin, o.frames, o.size, o.size, o.cout, o.kernel, o.stride, o.pad,
        flops / 1e9, o.reps
    );
    let line = |who: &str, f: &[f64], b: &[f64]| {
        let (f, b) = (median(f), median(b));
        format!(
            "{who}: forward {:.0} ms ({:.1} GFLOP/s)  forward+backward {:.0} ms ({:.1} GFLOP/s)\n",
            f * 1e3,
            gf(f, 1.0),
            b * 1e3,
            gf(b, 3.0)
        )
    };
    s += &line("vssl ", &vf, &vb);
    if torch.is_some() {
        s += &line("torch", &tf, &tb);
        s += &format!(
            "vssl GFLOP/s as a share of torch's: forward {:.0}%  forward+backward {:.0}%\n",
            100.0 * median(&tf) / median(&vf),
            100.0 * median(&tb) / median(&vb)
        );
    }
    Ok(s)
}
