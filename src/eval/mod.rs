//! Downstream protocols on a learned (or randomly initialised) backbone, as the
//! papers run them: linear probe on frozen clip features, nearest-neighbour
//! retrieval recall@k, and full fine-tuning with video-level testing. Linear probe
//! and retrieval share one feature extraction; `--splits 1,2,3` repeats a protocol
//! on each official split and reports mean and standard deviation.
//!
//! The protocols take an [`EvalSetup`] (the `[eval]` and `[data]` tables and the run
//! seed), a built backbone and a dataset; reading a run directory's recipe and
//! building those through the registry is the application layer's job
//! (`app::eval`).

pub mod config;
pub mod features;
pub mod finetune;
pub mod linear;
pub mod metrics;
pub mod retrieval;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::backbone::Backbone;
use crate::data::DataConfig;
use crate::io::read_safetensors;
use crate::run_dir::RunDir;
use crate::{Error, Result};

pub use config::{EvalConfig, Pooling};
pub use features::{extract, Features};

/// Downstream protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Linear classifier on frozen features.
    Linear,
    /// Nearest-neighbour retrieval recall@k.
    Knn,
    /// Full fine-tuning with video-level testing.
    Finetune,
}

impl std::str::FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Protocol::Linear),
            "knn" | "retrieval" => Ok(Protocol::Knn),
            "finetune" => Ok(Protocol::Finetune),
            other => Err(Error::BadInput(format!(
                "unknown protocol `{other}`; expected linear, knn or finetune"
            ))),
        }
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linear => "linear",
            Protocol::Knn => "knn",
            Protocol::Finetune => "finetune",
        }
    }
}

/// Where the weights to evaluate come from.
#[derive(Debug, Clone)]
pub struct EvalTarget {
    /// The run directory (holds `recipe.resolved.toml`, `model.safetensors`, `eval/`).
    pub run_dir: RunDir,
    /// The weights file (default `<run>/model.safetensors`).
    pub weights: PathBuf,
}

impl EvalTarget {
    /// Accepts a run directory or a `model.safetensors` inside one.
    pub fn locate(path: &Path) -> Result<Self> {
        let (run_dir, weights) = if path.is_dir() {
            (path.to_path_buf(), RunDir::new(path).model())
        } else if path.is_file() {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        } else {
            return Err(Error::BadInput(format!(
                "{}: no such run directory or weights file",
                path.display()
            )));
        };
        Ok(Self {
            run_dir: RunDir::new(run_dir),
            weights,
        })
    }
}

/// What a protocol runs under: the `[eval]` table, the evaluation dataset's
/// `[data]` table (`[eval.data]`, else the pretraining one) and the run's seed.
#[derive(Debug, Clone)]
pub struct EvalSetup<'a> {
    pub eval: &'a EvalConfig,
    pub data: &'a DataConfig,
    /// The run seed (`train.seed`): fine-tuning's head and clip sampling and the
    /// linear probe derive their randomness from it.
    pub seed: u64,
    /// The resolved recipe text, stored in fine-tuning's `last.safetensors`.
    pub recipe: &'a str,
}

impl EvalSetup<'_> {
    /// Frames per evaluation clip (`eval.frames`, else the dataset's `frames`).
    pub fn frames(&self) -> usize {
        self.eval.frames.unwrap_or(self.data.frames)
    }
}

/// Loads pretrained weights (a run's `model.safetensors` or any vssl weights
/// file; method heads `pretext.*` are ignored) into a freshly built backbone;
/// every backbone tensor must be present.
pub fn load_weights(net: &dyn Backbone, weights: &Path, device: &Device) -> Result<()> {
    let (tensors, _meta) = read_safetensors(weights, device)?;
    let own: BTreeMap<_, _> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("pretext."))
        .collect();
    let report = net
        .vars()
        .load(&own)
        .map_err(|e| Error::checkpoint(weights, e.to_string()))?;
    if !report.missing.is_empty() {
        return Err(Error::checkpoint(
            weights,
            format!("backbone tensors missing: {}", report.missing.join(", ")),
        ));
    }
    Ok(())
}

/// The name of a protocol's result: `<protocol>[-random][-splitN]`.
pub fn file_stem(p: Protocol, random_init: bool, split: Option<u8>) -> String {
    let mut s = p.name().to_string();
    if random_init {
        s.push_str("-random");
    }
    if let Some(n) = split {
        s.push_str(&format!("-split{n}"));
    }
    s
}

pub fn write_json(path: &Path, json: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(json).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    crate::run_dir::replace_file(path, text.as_bytes())
}

/// Numeric leaves of a JSON object as dotted keys (arrays, and the fine-tuning
/// `history`, are skipped): for mean/std over splits and for `vssl compare`.
pub fn numeric_leaves(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k != "history" {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    numeric_leaves(v, &key, out);
                }
            }
        }
        _ => {}
    }
}

/// Mean and standard deviation of every numeric leaf of the `metrics` of
/// several results (one per split).
pub fn mean_std_of(
    runs: &[serde_json::Value],
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
) {
    let mut table: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        let mut leaves = BTreeMap::new();
        numeric_leaves(&r["metrics"], "", &mut leaves);
        for (k, v) in leaves {
            table.entry(k).or_default().push(v);
        }
    }
    let (mut mean, mut std) = (serde_json::Map::new(), serde_json::Map::new());
    for (k, xs) in &table {
        let (m, s) = metrics::mean_std(xs);
        mean.insert(k.clone(), m.into());
        std.insert(k.clone(), s.into());
    }
    (mean, std)
}
