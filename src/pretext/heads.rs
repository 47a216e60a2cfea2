//! Small heads shared by methods: a linear layer with PyTorch's default
//! initialisation and seeded dropout (candle's CPU RNG cannot be seeded, and a
//! resumed run must draw the same masks, so masks come from the step seed).

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::nn::{Init, VarStore};
use crate::Result;

/// `y = x W^T + b`, names `weight` `[out, in]` and `bias` `[out]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(vs: &VarStore, input: usize, output: usize) -> Result<Self> {
        let weight = vs.var("weight", (output, input), Init::LinearDefault)?;
        let bound = 1.0 / (input as f64).sqrt();
        let bias = vs.var("bias", output, Init::Normal(bound / 3.0))?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Inverted dropout with a mask drawn from `seed` (identity when `p == 0` or not training).
pub fn dropout(x: &Tensor, p: f64, train: bool, seed: u64) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < p {
                0.0
            } else {
                scale as f32
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?.to_device(x.device())?;
    Ok(x.mul(&mask)?)
}
