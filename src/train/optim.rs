//! Optimizers whose state can be checkpointed.
//!
//! candle-nn's `SGD` has no momentum and its `AdamW` keeps its moment estimates
//! private, so neither can be saved and restored: a resumed run would silently
//! restart its moments from zero and diverge from an uninterrupted one. This
//! module re-implements SGD (momentum, Nesterov, weight decay) and AdamW with
//! exactly PyTorch's update rules, keeps every piece of state as a detached
//! tensor on the parameter's device, and exports/imports it as named tensors
//! (`optim.*`) that go into the same safetensors checkpoint as the weights.
//!
//! State is created lazily, as in PyTorch: a parameter that has not yet received
//! a gradient has no momentum buffer and no moment estimates, and AdamW counts
//! steps per parameter so its bias correction matches PyTorch even when some
//! parameters skip steps (frozen then unfrozen heads).

use std::collections::{BTreeMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::{Error, Result};

/// Which update rule to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with optional (Nesterov) momentum, coupled L2 weight decay.
    Sgd,
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    Adamw,
}

/// Hyper-parameters of an [`Optimizer`]; fields a kind does not use are ignored
/// (`momentum`/`nesterov` for AdamW, `betas`/`eps` for SGD).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// SGD momentum factor (0 disables the momentum buffer). Dampening is always 0.
    pub momentum: f64,
    /// SGD Nesterov momentum (requires `momentum > 0`).
    pub nesterov: bool,
    /// SGD: L2 penalty added to the gradient. AdamW: decoupled decay factor.
    pub weight_decay: f64,
    /// AdamW coefficients for the first and second moment running averages.
    pub betas: [f64; 2],
    /// AdamW term added to the denominator for numerical stability.
    pub eps: f64,
}

impl OptimizerConfig {
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::BadInput(format!("optimizer config: {msg}")));
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        match self.kind {
            OptimizerKind::Sgd => {
                if !(self.momentum.is_finite() && self.momentum >= 0.0) {
                    return bad(format!("momentum must be >= 0, got {}", self.momentum));
                }
                if self.nesterov && self.momentum <= 0.0 {
                    return bad("nesterov momentum requires momentum > 0".to_string());
                }
            }
            OptimizerKind::Adamw => {
                for (i, b) in self.betas.iter().enumerate() {
                    if !(0.0..1.0).contains(b) {
                        return bad(format!("betas[{i}] must be in [0, 1), got {b}"));
                    }
                }
                if !(self.eps.is_finite() && self.eps >= 0.0) {
                    return bad(format!("eps must be >= 0, got {}", self.eps));
                }
            }
        }
        Ok(())
    }
}

/// Per-parameter state; `None` until the parameter first receives a gradient.
#[derive(Debug, Clone, Default)]
struct ParamState {
    /// SGD momentum buffer.
    momentum: Option<Tensor>,
    /// AdamW first moment.
    exp_avg: Option<Tensor>,
    /// AdamW second moment.
    exp_avg_sq: Option<Tensor>,
    /// AdamW per-parameter step count (PyTorch's `state["step"]`).
    step: u64,
}

const PREFIX: &str = "optim.";
const K_STEP: &str = "optim.step";
const K_MOMENTUM: &str = "optim.momentum.";
const K_EXP_AVG: &str = "optim.exp_avg.";
const K_EXP_AVG_SQ: &str = "optim.exp_avg_sq.";
const K_PARAM_STEP: &str = "optim.param_step.";

/// SGD or AdamW over a fixed list of named parameters, with exportable state.
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Var)>,
    state: Vec<ParamState>,
    steps: u64,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("cfg", &self.cfg)
            .field("params", &self.params.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl Optimizer {
    /// An optimizer over `params` (names must be unique; parameters must be float tensors).
    pub fn new(cfg: OptimizerConfig, params: Vec<(String, Var)>) -> Result<Self> {
        cfg.validate()?;
        let mut seen = HashSet::new();
        for (name, var) in &params {
            if !seen.insert(name.as_str()) {
                return Err(Error::BadInput(format!(
                    "optimizer: parameter `{name}` listed twice"
                )));
            }
            if !var.dtype().is_float() {
                return Err(Error::BadInput(format!(
                    "optimizer: parameter `{name}` has non-float dtype {:?}",
                    var.dtype()
                )));
            }
        }
        let state = vec![ParamState::default(); params.len()];
        Ok(Self {
            cfg,
            params,
            state,
            steps: 0,
        })
    }

    /// The configuration this optimizer was built with.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// The optimized parameters, in the order given to [`Optimizer::new`].
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of [`Optimizer::step`] calls so far (restored by [`Optimizer::load_state`]).
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr`; params without a gradient in `grads` are
    /// left untouched (and their state too).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for ((name, var), st) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            if grad.dims() != var.dims() {
                return Err(Error::Internal(format!(
                    "optimizer: gradient of `{name}` has shape {:?}, parameter {:?}",
                    grad.dims(),
                    var.dims()
                )));
            }
            let p = var.as_tensor().detach();
            let g = grad.detach().to_dtype(p.dtype())?.to_device(p.device())?;
            let new_p = match self.cfg.kind {
                OptimizerKind::Sgd => sgd_update(&self.cfg, st, &p, g, lr)?,
                OptimizerKind::Adamw => Some(adamw_update(&self.cfg, st, &p, &g, lr)?),
            };
            // `None`: updated in place already.
            if let Some(new_p) = new_p {
                var.set(&new_p)?;
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// All state as named tensors for a checkpoint, every name prefixed `optim.`:
    /// `optim.step` (1-element I64: number of steps taken), and per parameter that
    /// has state `optim.momentum.<param>` (SGD with momentum) or
    /// `optim.exp_avg.<param>`, `optim.exp_avg_sq.<param>`, `optim.param_step.<param>`
    /// (AdamW). Tensors are detached and stay on the parameter's device.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(K_STEP.to_string(), step_tensor(self.steps)?)];
        for ((name, _), st) in self.params.iter().zip(&self.state) {
            if let Some(m) = &st.momentum {
                out.push((format!("{K_MOMENTUM}{name}"), m.clone()));
            }
            if let (Some(m), Some(v)) = (&st.exp_avg, &st.exp_avg_sq) {
                out.push((format!("{K_EXP_AVG}{name}"), m.clone()));
                out.push((format!("{K_EXP_AVG_SQ}{name}"), v.clone()));
                out.push((format!("{K_PARAM_STEP}{name}"), step_tensor(st.step)?));
            }
        }
        Ok(out)
    }

    /// Restores state written by [`Optimizer::state`]; keys not starting with
    /// `optim.` are ignored. Fails, naming the tensor, on a shape mismatch, a
    /// missing `optim.step`, a partial AdamW state for a parameter, or an `optim.`
    /// key this optimizer does not know (another kind, or an unknown parameter).
    /// Nothing is changed when an error is returned. Tensors are converted to each
    /// parameter's dtype and device.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let bad = |name: &str, msg: String| {
            Error::BadInput(format!("optimizer state: tensor `{name}`: {msg}"))
        };
        let steps = match tensors.get(K_STEP) {
            Some(t) => read_count(K_STEP, t)?,
            None => return Err(bad(K_STEP, "missing".to_string())),
        };
        let mut used: HashSet<&str> = HashSet::from([K_STEP]);
        let mut new_state = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let mut fetch = |prefix: &str| -> Result<Option<Tensor>> {
                let key = format!("{prefix}{name}");
                let Some((k, t)) = tensors.get_key_value(&key) else {
                    return Ok(None);
                };
                used.insert(k.as_str());
                if prefix == K_PARAM_STEP {
                    return Ok(Some(t.clone()));
                }
                if t.dims() != var.dims() {
                    return Err(bad(
                        &key,
                        format!(
                            "shape {:?} in checkpoint, parameter has {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ));
                }
                Ok(Some(
                    t.detach().to_dtype(var.dtype())?.to_device(var.device())?,
                ))
            };
            let mut st = ParamState::default();
            match self.cfg.kind {
                OptimizerKind::Sgd => {
                    if self.cfg.momentum > 0.0 {
                        st.momentum = fetch(K_MOMENTUM)?;
                    }
                }
                OptimizerKind::Adamw => {
                    let m = fetch(K_EXP_AVG)?;
                    let v = fetch(K_EXP_AVG_SQ)?;
                    let s = fetch(K_PARAM_STEP)?;
                    match (m, v, s) {
                        (None, None, None) => {}
                        (Some(m), Some(v), Some(s)) => {
                            let key = format!("{K_PARAM_STEP}{name}");
                            st.step = read_count(&key, &s)?;
                            if st.step == 0 {
                                return Err(bad(
                                    &key,
                                    "AdamW state with a step count of 0".to_string(),
                                ));
                            }
                            st.exp_avg = Some(m);
                            st.exp_avg_sq = Some(v);
                        }
                        (m, v, _) => {
                            let missing = if m.is_none() {
                                K_EXP_AVG
                            } else if v.is_none() {
                                K_EXP_AVG_SQ
                            } else {
                                K_PARAM_STEP
                            };
                            return Err(bad(
                                &format!("{missing}{name}"),
                                "missing (AdamW state is partial)".to_string(),
                            ));
                        }
                    }
                }
            }
            new_state.push(st);
        }
        if let Some(extra) = tensors
            .keys()
            .find(|k| k.starts_with(PREFIX) && !used.contains(k.as_str()))
        {
            return Err(bad(
                extra,
                format!(
                    "not part of this optimizer's state ({:?} over {} parameters)",
                    self.cfg.kind,
                    self.params.len()
                ),
            ));
        }
        self.state = new_state;
        self.steps = steps;
        Ok(())
    }
}

/// PyTorch `torch.optim.SGD` (dampening 0) for one parameter; returns the new value,
/// or `None` where it updated `p` (the parameter's own storage) in place.
fn sgd_update(
    cfg: &OptimizerConfig,
    st: &mut ParamState,
    p: &Tensor,
    grad: Tensor,
    lr: f64,
) -> Result<Option<Tensor>> {
    // Fast path: the same f32 arithmetic in two in-place passes instead of six
    // allocating ones and a copy.
    if cfg.momentum != 0.0
        && !cfg.nesterov
        && p.device().is_cpu()
        && p.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && p.is_contiguous()
    {
        if let Some(buf) = st.momentum.take() {
            // A buffer restored from a checkpoint may be a view: own it first.
            let buf = if buf.is_contiguous() {
                buf
            } else {
                buf.copy()?
            };
            super::sgd_cpu::update_momentum(&buf, &grad, p, cfg.momentum, cfg.weight_decay)?;
            super::sgd_cpu::step_in_place(p, &buf, lr)?;
            st.momentum = Some(buf);
            return Ok(None);
        }
    }
    let mut g = grad;
    if cfg.weight_decay != 0.0 {
        g = (g + (p * cfg.weight_decay)?)?;
    }
    if cfg.momentum != 0.0 {
        let buf = match st.momentum.take() {
            None => g.copy()?,
            Some(buf) => ((buf * cfg.momentum)? + &g)?,
        };
        g = if cfg.nesterov {
            (g + (&buf * cfg.momentum)?)?
        } else {
            buf.clone()
        };
        st.momentum = Some(buf);
    }
    Ok(Some((p - (g * lr)?)?))
}

/// PyTorch `torch.optim.AdamW` (amsgrad off) for one parameter; returns the new value.
fn adamw_update(
    cfg: &OptimizerConfig,
    st: &mut ParamState,
    p: &Tensor,
    g: &Tensor,
    lr: f64,
) -> Result<Tensor> {
    let [b1, b2] = cfg.betas;
    let p = if cfg.weight_decay != 0.0 {
        (p * (1.0 - lr * cfg.weight_decay))?
    } else {
        p.clone()
    };
    let (m, v) = match (st.exp_avg.take(), st.exp_avg_sq.take()) {
        (Some(m), Some(v)) => (m, v),
        _ => {
            st.step = 0;
            (g.zeros_like()?, g.zeros_like()?)
        }
    };
    st.step += 1;
    let m = ((m * b1)? + (g * (1.0 - b1))?)?;
    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let t = i32::try_from(st.step).unwrap_or(i32::MAX);
    let bias1 = 1.0 - b1.powi(t);
    let bias2_sqrt = (1.0 - b2.powi(t)).sqrt();
    let step_size = lr / bias1;
    let denom = ((v.sqrt()? / bias2_sqrt)? + cfg.eps)?;
    let new_p = (&p - ((&m / &denom)? * step_size)?)?;
    st.exp_avg = Some(m);
    st.exp_avg_sq = Some(v);
    Ok(new_p)
}

/// Scales gradients in place so their global L2 norm is at most `max_norm`, with
/// PyTorch's `clip_grad_norm_` semantics: `coef = max_norm / (norm + 1e-6)`, applied
/// only when `coef < 1`. Only gradients of `params` count and are scaled; params
/// without a gradient are skipped. Returns the pre-clip total norm (NaN or
/// infinite if a gradient is; then nothing is scaled and the caller decides).
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<f64> {
    let mut sums: Vec<Tensor> = Vec::new();
    let mut device: Option<Device> = None;
    for (_, var) in params {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        let acc = if g.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let s = g
            .detach()
            .to_dtype(acc)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?;
        let dev = device.get_or_insert_with(|| g.device().clone());
        sums.push(s.to_device(dev)?);
    }
    if sums.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sums, 0)?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for (_, var) in params {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g.detach() * coef)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(total)
}

fn step_tensor(n: u64) -> Result<Tensor> {
    let n =
        i64::try_from(n).map_err(|_| Error::Internal(format!("step count {n} overflows i64")))?;
    Ok(Tensor::new(&[n], &Device::Cpu)?)
}

/// A non-negative integral count stored as a 1-element tensor of any dtype.
fn read_count(name: &str, t: &Tensor) -> Result<u64> {
    let bad = |msg: String| Error::BadInput(format!("optimizer state: tensor `{name}`: {msg}"));
    if t.elem_count() != 1 {
        return Err(bad(format!("expected 1 element, got shape {:?}", t.dims())));
    }
    let v = match t.dtype() {
        DType::I64 => t.flatten_all()?.to_vec1::<i64>()?[0] as f64,
        _ => t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0],
    };
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
        return Err(bad(format!(
            "expected a non-negative integer count, got {v}"
        )));
    }
    Ok(v as u64)
}
