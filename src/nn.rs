//! Parameter store: one [`VarStore`] holds every trainable parameter and every
//! buffer (batch-norm running statistics) of a model under torchvision-style dotted
//! names. candle's `VarBuilder` hands out tensors, not `Var`s, so running statistics
//! could not be updated in place and trainable parameters could not be told apart
//! from buffers; this thin wrapper keeps both lists explicit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::{Error, Result};

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Every element set to this constant.
    Const(f64),
    /// Kaiming-normal for ReLU networks (fan-out mode, as torchvision's video ResNets).
    KaimingNormalFanOut,
    /// Uniform in `[-b, b]` with `b = 1/sqrt(fan_in)` (PyTorch's default for `nn.Linear`).
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

/// 64-bit mix (splitmix64 finaliser) used to derive independent seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable hash of a string, for per-parameter seeds.
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
    })
}

fn make_init(shape: &Shape, init: Init, seed: u64, name: &str, device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    use rand_distr_free::normal;
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

/// Box-Muller normal sampling without an extra dependency.
mod rand_distr_free {
    use rand::Rng;
    pub fn normal<R: Rng>(rng: &mut R) -> f64 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
