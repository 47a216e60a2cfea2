//! `vssl bench ops`: every 3D op on a device against the CPU kernels, forward and
//! gradients, in f32 and bf16, as a table with pass/fail per row.
//!
//! Why in the binary: the tests check the device-generic forms on the CPU, but the
//! GPU machines this project borrows have no Rust toolchain. `tools/gpu-check.sh`
//! runs this there, so the CUDA path is checked on CUDA too. conv3d runs twice: its
//! composed form in chunks of samples (on the CPU that is the comparison the tests
//! make, so `--device cpu` is a meaningful dry run), and `conv3d` as the device
//! takes it (cuDNN in a `cudnn` build on CUDA).

use std::fmt::Write;

use candle_core::{DType, Device, Tensor, Var};

use crate::nn::VarStore;
use crate::ops::conv3d::{conv3d, conv3d_generic_chunked, Conv3dConfig};
use crate::ops::tgn::TemporalGroupNorm;
use crate::ops::{avg_pool3d, max_pool3d, BatchNorm3d};
use crate::Result;

/// im2col elements per chunk of the device conv3d: small, so the test shapes split.
const CHUNK: usize = 1 << 14;

/// One compared op: the largest relative errors (max |a - b| / max |b|) of the
/// output and of each gradient.
struct Row {
    op: String,
    dtype: DType,
    forward: f64,
    grads: Vec<(&'static str, f64)>,
}

impl Row {
    fn new(
        op: impl Into<String>,
        dtype: DType,
        forward: f64,
        grads: Vec<(&'static str, f64)>,
    ) -> Self {
        Self {
            op: op.into(),
            dtype,
            forward,
            grads,
        }
    }

    /// f32: the kernels and the composed form add in other orders; bf16: 8
    /// significant bits on the device side against the f32 kernels.
    fn tolerance(&self) -> (f64, f64) {
        match self.dtype {
            DType::BF16 => (2e-2, 4e-2),
            _ => (1e-4, 1e-3),
        }
    }

    fn ok(&self) -> bool {
        let (tf, tg) = self.tolerance();
        self.forward <= tf && self.grads.iter().all(|(_, e)| *e <= tg)
    }
}

/// Seeded values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = crate::seed::mix(seed ^ 0x0b5e);
    (0..n)
        .map(|_| {
            s = crate::seed::mix(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let b = b.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()? as f64;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(f64::MIN_POSITIVE))
}

/// Kernel size, stride and padding (t, h, w).
type Geometry = ([usize; 3], [usize; 3], [usize; 3]);

/// An op's output and the parameters it owns (whose gradients are compared too).
type Out = (Tensor, Vec<Tensor>);

/// Runs `reference` on the CPU in f32 and `device` on `dev` in `dtype` on the same
/// inputs (rounded to `dtype` for both), with the loss `sum(y ⊙ r)` for one seeded `r`, and compares the outputs
/// and the gradients of the inputs and of the returned parameters.
fn compare(
    dev: &Device,
    dtype: DType,
    inputs: &[Vec<usize>],
    names: &[&'static str],
    reference: impl Fn(&[Tensor]) -> Result<Out>,
    device: impl Fn(&[Tensor], DType) -> Result<Out>,
) -> Result<(f64, Vec<(&'static str, f64)>)> {
    let vars = |d: &Device| -> Result<Vec<Var>> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let n = shape.iter().product();
                Ok(Var::from_tensor(&Tensor::from_vec(
                    values(n, i as u64 + 1),
                    shape.as_slice(),
                    d,
                )?)?)
            })
            .collect()
    };
    let (cpu_in, dev_in) = (vars(&Device::Cpu)?, vars(dev)?);
    let tensors = |v: &[Var]| v.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>();
    // The reference sees the inputs rounded as the device side's are, so the
    // comparison measures the op, not the rounding of its inputs (which also moves
    // max pooling's ties).
    let rounded = cpu_in
        .iter()
        .map(|v| Ok(v.as_tensor().to_dtype(dtype)?.to_dtype(DType::F32)?))
        .collect::<Result<Vec<_>>>()?;
    let (y_ref, p_ref) = reference(&rounded)?;
    let (y_dev, p_dev) = device(&tensors(&dev_in), dtype)?;
    let r = Tensor::from_vec(values(y_ref.elem_count(), 99), y_ref.shape(), &Device::Cpu)?;
    let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
    let y32 = y_dev.to_dtype(DType::F32)?;
    let g_dev = (&y32 * r.to_device(dev)?)?.sum_all()?.backward()?;
    let forward = rel_err(&y32, &y_ref)?;
    let mut grads = Vec::new();
    let refs = cpu_in.iter().map(|v| v.as_tensor()).chain(p_ref.iter());
    let devs = dev_in.iter().map(|v| v.as_tensor()).chain(p_dev.iter());
    for ((name, a), b) in names.iter().zip(refs).zip(devs) {
        let missing = || crate::Error::Internal(format!("bench ops: no gradient for {name}"));
        let ga = g_ref.get(a).ok_or_else(missing)?;
        let gb = g_dev.get(b).ok_or_else(missing)?;
        grads.push((*name, rel_err(gb, ga)?));
    }
    Ok((forward, grads))
}

/// A batch-norm layer on `dev` with seeded scale and shift.
fn bn(dev: &Device, c: usize) -> Result<BatchNorm3d> {
    let vs = VarStore::new(dev, 0);
    let bn = BatchNorm3d::new(&vs, c)?;
    bn_params(&vs, c, 1)?;
    Ok(bn)
}

/// Sets a store's `weight` and `bias` (`n` values each) to seeded values.
fn bn_params(vs: &VarStore, n: usize, groups: usize) -> Result<()> {
    for (name, v) in vs.all() {
        let seed = match name.as_str() {
            "weight" => 11,
            "bias" => 12,
            _ => continue,
        };
        let mut vals = values(n * groups, seed);
        if seed == 11 {
            vals.iter_mut().for_each(|x| *x += 1.5);
        }
        v.set(&Tensor::from_vec(vals, v.shape(), v.device())?)?;
    }
    Ok(())
}

fn tgn(dev: &Device, c: usize, groups: usize) -> Result<TemporalGroupNorm> {
    let vs = VarStore::new(dev, 0);
    let t = TemporalGroupNorm::new(&vs, c, groups)?;
    bn_params(&vs, c, groups)?;
    Ok(t)
}

/// Compares every op on `dev`; the report, and whether every row passed.
pub fn run_ops(dev: &Device) -> Result<(String, bool)> {
    let mut rows = Vec::new();
    let convs: [(&str, usize, Geometry); 5] = [
        ("conv3d 3x3x3 s1 p1", 8, ([3, 3, 3], [1, 1, 1], [1, 1, 1])),
        ("conv3d 1x3x3 s1", 8, ([1, 3, 3], [1, 1, 1], [0, 1, 1])),
        ("conv3d 3x3x3 s2 p1", 8, ([3, 3, 3], [2, 2, 2], [1, 1, 1])),
        ("conv3d 1x1x1 s2", 8, ([1, 1, 1], [2, 2, 2], [0, 0, 0])),
        ("conv3d stem 3x7x7", 3, ([3, 7, 7], [1, 2, 2], [1, 3, 3])),
    ];
    for dtype in [DType::F32, DType::BF16] {
        for (name, c, (k, stride, padding)) in convs {
            let cfg = Conv3dConfig {
                stride,
                padding,
                ..Conv3dConfig::default()
            };
            let shapes = [vec![2, c, 6, 12, 12], vec![16, c, k[0], k[1], k[2]]];
            // The composed form in chunks (what the tests compare on the CPU), and
            // what `conv3d` runs on the device (cuDNN in a `cudnn` build on CUDA).
            for chunked in [true, false] {
                let (forward, grads) = compare(
                    dev,
                    dtype,
                    &shapes,
                    &["dx", "dw"],
                    |v| Ok((conv3d(&v[0], &v[1], None, &cfg)?, vec![])),
                    |v, dt| {
                        let (x, w) = (v[0].to_dtype(dt)?, v[1].to_dtype(dt)?);
                        let y = if chunked {
                            conv3d_generic_chunked(&x, &w, None, &cfg, CHUNK)?
                        } else {
                            conv3d(&x, &w, None, &cfg)?
                        };
                        Ok((y, vec![]))
                    },
                )?;
                let how = if chunked { "chunked" } else { "device" };
                rows.push(Row::new(format!("{name} ({how})"), dtype, forward, grads));
            }
        }
        // Batch norm, and TGN with 2 groups: training mode, on 8 channels.
        for (name, shape, groups) in [
            ("batch_norm3d (train)", vec![3, 8, 4, 6, 6], 0),
            ("tgn, 2 groups (train)", vec![2, 8, 6, 6, 6], 2),
        ] {
            let layer = |d: &Device, x: &Tensor| -> Result<Out> {
                if groups == 0 {
                    let l = bn(d, 8)?;
                    Ok((
                        l.forward_t(x, true)?,
                        vec![l.weight.clone(), l.bias.clone()],
                    ))
                } else {
                    let l = tgn(d, 8, groups)?;
                    Ok((
                        l.forward_t(x, true)?,
                        vec![l.weight.clone(), l.bias.clone()],
                    ))
                }
            };
            let (forward, grads) = compare(
                dev,
                dtype,
                &[shape],
                &["dx", "dweight", "dbias"],
                |v| layer(&Device::Cpu, &v[0]),
                |v, dt| layer(dev, &v[0].to_dtype(dt)?),
            )?;
            rows.push(Row::new(name, dtype, forward, grads));
        }
        type Pool = fn(&Tensor, [usize; 3], [usize; 3], [usize; 3]) -> Result<Tensor>;
        let max: (&str, Pool, Geometry) = (
            "max_pool3d 3x3x3 s2 p1",
            max_pool3d,
            ([3; 3], [2; 3], [1; 3]),
        );
        let avg: (&str, Pool, Geometry) =
            ("avg_pool3d 2x2x2 s2", avg_pool3d, ([2; 3], [2; 3], [0; 3]));
        for (name, f, (k, s, p)) in [max, avg] {
            let shape = [vec![2, 4, 6, 7, 7]];
            let (forward, grads) = compare(
                dev,
                dtype,
                &shape,
                &["dx"],
                |v| Ok((f(&v[0], k, s, p)?, vec![])),
                |v, dt| Ok((f(&v[0].to_dtype(dt)?, k, s, p)?, vec![])),
            )?;
            rows.push(Row::new(name, dtype, forward, grads));
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ops on {:?} against the CPU kernels (f32), max relative error (|a - b|max / |b|max):",
        dev.location()
    );
    let _ = writeln!(
        out,
        "  {:38} {:5} {:>9}  {:40} tolerance  ok",
        "op", "dtype", "forward", "gradients"
    );
    let mut all = true;
    for r in &rows {
        let g: Vec<String> = r
            .grads
            .iter()
            .map(|(n, e)| format!("{n} {e:.1e}"))
            .collect();
        let (tf, tg) = r.tolerance();
        all &= r.ok();
        let _ = writeln!(
            out,
            "  {:38} {:5} {:>9.1e}  {:40} {tf:.0e}/{tg:.0e}  {}",
            r.op,
            format!("{:?}", r.dtype).to_lowercase(),
            r.forward,
            g.join(", "),
            if r.ok() { "ok" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if all {
            "all ops within tolerance"
        } else {
            "SOME OPS FAILED"
        }
    );
    Ok((out, all))
}
