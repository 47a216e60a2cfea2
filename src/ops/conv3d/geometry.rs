//! Geometry of one 3D convolution: the output sizes from PyTorch's formula
//! `(L + 2p - d(k-1) - 1) / s + 1` and the checks on shapes, padding, stride and
//! dilation, resolved once in [`Geom::new`] and shared by the tensor-op path, the
//! blocked CPU kernels ([`super::cpu`]) and the direct ones ([`super::direct`]).

use candle_core::Tensor;

use super::Conv3dConfig;
use crate::ops::{dims5, op_error};
use crate::Result;

/// Fully resolved geometry of one convolution (validated once, shared by all kernels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) o: usize,
    pub(super) inp: [usize; 3],
    pub(super) k: [usize; 3],
    pub(super) out: [usize; 3],
    pub(super) stride: [usize; 3],
    pub(super) pad: [usize; 3],
    pub(super) dil: [usize; 3],
}

impl Geom {
    pub(super) fn new(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Self> {
        const OP: &str = "conv3d";
        let [n, c, t, h, wd] = dims5(OP, "input", x)?;
        let [o, wc, kt, kh, kw] = match *w.dims() {
            [a, b, c, d, e] => [a, b, c, d, e],
            _ => {
                return Err(op_error(
                    OP,
                    format!(
                        "weight must be [O, C, kt, kh, kw], got shape {:?}",
                        w.dims()
                    ),
                ))
            }
        };
        if c != wc {
            return Err(op_error(
                OP,
                format!(
                    "channel mismatch: input {:?} has {c} channels, weight {:?} expects {wc}",
                    x.dims(),
                    w.dims()
                ),
            ));
        }
        if x.dtype() != w.dtype() {
            return Err(op_error(
                OP,
                format!(
                    "dtype mismatch: input {:?}, weight {:?}",
                    x.dtype(),
                    w.dtype()
                ),
            ));
        }
        if !x.device().same_device(w.device()) {
            return Err(op_error(OP, "input and weight are on different devices"));
        }
        if o == 0 || c == 0 || [kt, kh, kw].contains(&0) {
            return Err(op_error(
                OP,
                format!("weight {:?} has a zero-sized dimension", w.dims()),
            ));
        }
        if cfg.stride.contains(&0) || cfg.dilation.contains(&0) {
            return Err(op_error(
                OP,
                format!(
                    "stride {:?} and dilation {:?} must be positive",
                    cfg.stride, cfg.dilation
                ),
            ));
        }
        let inp = [t, h, wd];
        let k = [kt, kh, kw];
        let mut out = [0; 3];
        for ax in 0..3 {
            let padded = inp[ax] + 2 * cfg.padding[ax];
            let span = cfg.dilation[ax] * (k[ax] - 1) + 1;
            if padded < span {
                return Err(op_error(
                    OP,
                    format!(
                        "input {:?}: axis {} has size {} ({} padded), smaller than the dilated kernel extent {}",
                        x.dims(),
                        ["T", "H", "W"][ax],
                        inp[ax],
                        padded,
                        span
                    ),
                ));
            }
            out[ax] = (padded - span) / cfg.stride[ax] + 1;
        }
        Ok(Self {
            n,
            c,
            o,
            inp,
            k,
            out,
            stride: cfg.stride,
            pad: cfg.padding,
            dil: cfg.dilation,
        })
    }

    pub(super) fn kvol(&self) -> usize {
        self.k.iter().product()
    }
    /// Rows of the im2col matrix: C·kt·kh·kw.
    pub(super) fn ck(&self) -> usize {
        self.c * self.kvol()
    }
    /// Output positions per sample (columns of the im2col matrix).
    pub(super) fn l(&self) -> usize {
        self.out.iter().product()
    }
    /// Input positions per channel.
    pub(super) fn lin(&self) -> usize {
        self.inp.iter().product()
    }
    /// Multiply-adds ×2 of the forward pass (and of each backward product).
    pub(super) fn flops(&self) -> f64 {
        2.0 * (self.n * self.o * self.l() * self.ck()) as f64
    }
    /// The geometry as `[N,C,T,H,W] -> O k[..] s[..]` for the profile table.
    pub(super) fn describe(&self) -> String {
        let mut s = format!(
            "{:?}->{} k{:?} s{:?}",
            self.x_dims(),
            self.o,
            self.k,
            self.stride
        );
        if self.dil != [1; 3] {
            s += &format!(" d{:?}", self.dil);
        }
        s.replace(' ', "").replacen("->", " -> ", 1)
    }
    pub(super) fn x_dims(&self) -> [usize; 5] {
        [self.n, self.c, self.inp[0], self.inp[1], self.inp[2]]
    }
    pub(super) fn w_dims(&self) -> [usize; 5] {
        [self.o, self.c, self.k[0], self.k[1], self.k[2]]
    }
    pub(super) fn y_dims(&self) -> [usize; 5] {
        [self.n, self.o, self.out[0], self.out[1], self.out[2]]
    }
}
