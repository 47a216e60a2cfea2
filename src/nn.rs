//! Parameter store: one [`VarStore`] holds every trainable parameter and every
//! buffer (batch-norm running statistics) of a model under torchvision-style dotted
//! names. candle's `VarBuilder` hands out tensors, not `Var`s, so running statistics
//! could not be updated in place and trainable parameters could not be told apart
//! from buffers; this thin wrapper keeps both lists explicit.
//!
//! Also the two parameterised building blocks every layer above shares: [`Linear`]
//! (backbone classifiers, method heads, the fine-tuning head) and seeded [`dropout`].
//! `nn` sits below `ops` (whose layers own their parameters through [`VarStore`]) and
//! imports nothing from it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::seed::{hash_str, mix, normal};
use crate::{Error, Result};

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Every element set to this constant.
    Const(f64),
    /// Kaiming-normal for ReLU networks (fan-out mode, as torchvision's video ResNets).
    KaimingNormalFanOut,
    /// Uniform in `[-b, b)` with `b = 1/sqrt(fan_in)`: PyTorch's default for the
    /// `nn.Linear` weight (`kaiming_uniform_(a = sqrt(5))` reduces to this bound).
    LinearDefault,
    /// Normal with this standard deviation.
    Normal(f64),
}

#[derive(Default)]
struct Inner {
    vars: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    /// Deterministic initialisation: a counter-based RNG seeded per store.
    seed: u64,
}

/// A shared, named collection of variables; cheap to clone, scoped with [`VarStore::pp`].
#[derive(Clone)]
pub struct VarStore {
    inner: Arc<Mutex<Inner>>,
    prefix: String,
    device: Device,
    dtype: DType,
}

impl VarStore {
    /// Empty store; `seed` makes parameter initialisation reproducible.
    pub fn new(device: &Device, seed: u64) -> Self {
        let inner = Inner {
            seed,
            ..Default::default()
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
            prefix: String::new(),
            device: device.clone(),
            dtype: DType::F32,
        }
    }

    /// A view of the same store under `prefix.name`.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let prefix = self.path(name.as_ref());
        Self {
            inner: self.inner.clone(),
            prefix,
            device: self.device.clone(),
            dtype: self.dtype,
        }
    }

    /// The full dotted name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A trainable parameter, created on first use.
    pub fn var(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let full = self.path(name);
        let shape = shape.into();
        let mut inner = self.inner.lock().expect("var store poisoned");
        if let Some(v) = inner.vars.get(&full) {
            return Ok(v.as_tensor().clone());
        }
        let t = make_init(&shape, init, inner.seed, &full, &self.device)?;
        let v = Var::from_tensor(&t)?;
        inner.vars.insert(full, v.clone());
        Ok(v.as_tensor().clone())
    }

    /// A non-trainable buffer (running statistics), created on first use.
    pub fn buffer(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        value: f64,
        dtype: DType,
    ) -> Result<Var> {
        let full = self.path(name);
        let mut inner = self.inner.lock().expect("var store poisoned");
        if let Some(v) = inner.buffers.get(&full) {
            return Ok(v.clone());
        }
        let t = Tensor::full(value, shape.into(), &self.device)?.to_dtype(dtype)?;
        let v = Var::from_tensor(&t)?;
        inner.buffers.insert(full, v.clone());
        Ok(v)
    }

    /// Trainable parameters whose name starts with this scope's prefix, sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("var store poisoned");
        inner
            .vars
            .iter()
            .filter(|(k, _)| self.in_scope(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every tensor (parameters and buffers) in scope, sorted by name: what is saved.
    pub fn all(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("var store poisoned");
        let mut out: Vec<(String, Var)> = inner
            .vars
            .iter()
            .chain(inner.buffers.iter())
            .filter(|(k, _)| self.in_scope(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every tensor in scope (as [`VarStore::all`]) with `prefix` prepended to its name:
    /// what a model file or checkpoint holds.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.all()
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.as_tensor().clone()))
            .collect()
    }

    fn in_scope(&self, name: &str) -> bool {
        self.prefix.is_empty()
            || name == self.prefix
            || name.starts_with(&format!("{}.", self.prefix))
    }

    /// Copies tensors into the store by name. Returns what was applied, what the store
    /// has that `tensors` lacked (missing) and what `tensors` has that the store lacks
    /// (unused). A shape mismatch is an error naming the tensor.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let all = self.all();
        for (name, var) in &all {
            match tensors.get(name) {
                Some(t) => {
                    if t.dims() != var.dims() {
                        return Err(Error::BadInput(format!(
                            "tensor `{name}`: shape {:?} in file, model expects {:?}",
                            t.dims(),
                            var.dims()
                        )));
                    }
                    var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                    report.applied.push(name.clone());
                }
                None => report.missing.push(name.clone()),
            }
        }
        let known: std::collections::BTreeSet<&String> = all.iter().map(|(k, _)| k).collect();
        report.unused = tensors
            .keys()
            .filter(|k| !known.contains(k))
            .cloned()
            .collect();
        Ok(report)
    }
}

/// What a load applied, what was missing from the file and what the model did not use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub applied: Vec<String>,
    pub missing: Vec<String>,
    pub unused: Vec<String>,
}

fn make_init(shape: &Shape, init: Init, seed: u64, name: &str, device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let dims = shape.dims();
    let n = shape.elem_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(seed ^ hash_str(name)));
    let data: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Normal(std) => (0..n).map(|_| (normal(&mut rng) * std) as f32).collect(),
        Init::KaimingNormalFanOut => {
            // fan_out = out_channels * receptive field
            let rf: usize = dims.iter().skip(2).product::<usize>().max(1);
            let fan_out = dims[0] * rf;
            let std = (2.0 / fan_out as f64).sqrt();
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        }
        Init::LinearDefault => {
            let fan_in = dims.get(1).copied().unwrap_or(dims[0]).max(1);
            let b = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
        }
    };
    Ok(Tensor::from_vec(data, shape.clone(), device)?)
}

/// `y = x Wᵀ + b` with `weight` `[out, in]` and `bias` `[out]` (PyTorch's names and
/// layout). The parameters are cast to the input's dtype in [`Linear::forward`].
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    /// The heads' linear layer: weight [`Init::LinearDefault`] (PyTorch's default
    /// weight initialisation), bias `N(0, (1/(3·sqrt(in)))²)`. The bias is NOT
    /// PyTorch's default (that is `U(-1/sqrt(in), 1/sqrt(in))`); it is kept because
    /// the shipped recipes' numbers depend on it.
    pub fn new(vs: &VarStore, input: usize, output: usize) -> Result<Self> {
        let bound = 1.0 / (input as f64).sqrt();
        Self::with_init(
            vs,
            input,
            output,
            Init::LinearDefault,
            Init::Normal(bound / 3.0),
        )
    }

    /// A linear layer with explicit weight and bias initialisations.
    pub fn with_init(
        vs: &VarStore,
        input: usize,
        output: usize,
        weight: Init,
        bias: Init,
    ) -> Result<Self> {
        let weight = vs.var("weight", (output, input), weight)?;
        let bias = vs.var("bias", output, bias)?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        let b = self.bias.to_dtype(x.dtype())?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(&b)?)
    }
}

/// Inverted dropout with a mask drawn from `seed` (identity when `p == 0` or not
/// training). candle's CPU RNG cannot be seeded, and a resumed run must draw the same
/// masks, so masks come from the caller's (step-derived) seed.
pub fn dropout(x: &Tensor, p: f64, train: bool, seed: u64) -> Result<Tensor> {
    let rows = x.dims().first().copied().unwrap_or(1);
    dropout_rows(x, p, train, seed, &(0..rows).collect::<Vec<_>>(), rows)
}

/// [`dropout`] of rows `rows` (in order) of a tensor with `total` rows: the mask is
/// drawn for the whole tensor and these rows are kept, so a data-parallel rank
/// holding part of a batch drops what one process on the whole batch would.
pub fn dropout_rows(
    x: &Tensor,
    p: f64,
    train: bool,
    seed: u64,
    rows: &[usize],
    total: usize,
) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    let per_row = x.elem_count() / rows.len().max(1);
    if rows.len() * per_row != x.elem_count() || rows.iter().any(|&r| r >= total) {
        return Err(Error::Internal(format!(
            "dropout of rows {rows:?} of {total} on a tensor of shape {:?}",
            x.dims()
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (1.0 - p);
    let whole: Vec<f32> = (0..total * per_row)
        .map(|_| {
            if rng.random::<f64>() < p {
                0.0
            } else {
                scale as f32
            }
        })
        .collect();
    let mask: Vec<f32> = rows
        .iter()
        .flat_map(|&r| whole[r * per_row..(r + 1) * per_row].iter().copied())
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}
