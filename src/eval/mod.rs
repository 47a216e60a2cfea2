//! Downstream protocols on a learned (or randomly initialised) backbone, as the
//! papers run them: linear probe on frozen clip features, nearest-neighbour
//! retrieval recall@k, and full fine-tuning with video-level testing. Linear probe
//! and retrieval share one feature extraction; `--splits 1,2,3` repeats a protocol
//! on each official split and reports mean and standard deviation.

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
use crate::recipe::{self, Recipe, RecipeSource};
use crate::train::checkpoint::read_safetensors;
use crate::{registry, Error, Result};

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
    pub run_dir: PathBuf,
    /// The weights file (default `<run>/model.safetensors`).
    pub weights: PathBuf,
}

impl EvalTarget {
    /// Accepts a run directory or a `model.safetensors` inside one.
    pub fn locate(path: &Path) -> Result<Self> {
        let (run_dir, weights) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.safetensors"))
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
        Ok(Self { run_dir, weights })
    }
}

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub protocols: Vec<Protocol>,
    /// Evaluate the same architecture untrained (same seed-controlled initialisation
    /// as pretraining starts from).
    pub random_init: bool,
    /// `--set` overrides on top of the run's resolved recipe.
    pub sets: Vec<String>,
    /// Official splits to run on (empty: the recipe's split).
    pub splits: Vec<u8>,
    /// Continue an interrupted fine-tuning run.
    pub resume: bool,
}

/// The backbone to evaluate: pretrained weights, or the untrained initialisation.
fn load_backbone(
    recipe: &Recipe,
    target: &EvalTarget,
    random_init: bool,
    device: &Device,
) -> Result<Box<dyn Backbone>> {
    let net = registry::backbone(
        &recipe.backbone,
        recipe.data.frames,
        recipe.train.seed,
        device,
    )?;
    if !random_init {
        let (tensors, _meta) = read_safetensors(&target.weights, device)?;
        let own: BTreeMap<_, _> = tensors
            .into_iter()
            .filter(|(k, _)| !k.starts_with("pretext."))
            .collect();
        let report = net
            .vars()
            .load(&own)
            .map_err(|e| Error::checkpoint(&target.weights, e.to_string()))?;
        if !report.missing.is_empty() {
            return Err(Error::checkpoint(
                &target.weights,
                format!("backbone tensors missing: {}", report.missing.join(", ")),
            ));
        }
    }
    Ok(net)
}

fn file_stem(p: Protocol, random_init: bool, split: Option<u8>) -> String {
    let mut s = p.name().to_string();
    if random_init {
        s.push_str("-random");
    }
    if let Some(n) = split {
        s.push_str(&format!("-split{n}"));
    }
    s
}

fn write_json(path: &Path, json: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(json).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Numeric leaves of a JSON object as dotted keys (arrays, and the fine-tuning
/// `history`, are skipped): for mean/std over splits and for `vssl compare`.
pub(crate) fn numeric_leaves(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
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

/// Evaluates a run; writes `<run>/eval/<protocol>[-random][-splitN].json` (and, with
/// several splits, `<protocol>[-random].json` holding mean and std); returns the JSON
/// objects in the order written (the summary last).
pub fn evaluate(
    target: &EvalTarget,
    opts: &EvalOptions,
    device: &Device,
) -> Result<Vec<serde_json::Value>> {
    let recipe_file = target.run_dir.join("recipe.resolved.toml");
    if !recipe_file.is_file() {
        return Err(Error::BadInput(format!(
            "{}: missing; is {} a vssl run directory?",
            recipe_file.display(),
            target.run_dir.display()
        )));
    }
    let base: Recipe = recipe::load(&RecipeSource::with_sets(recipe_file, opts.sets.clone()))?;
    let eval_dir = target.run_dir.join("eval");
    std::fs::create_dir_all(&eval_dir).map_err(|e| Error::io(&eval_dir, e))?;
    let many = opts.splits.len() > 1;
    let splits: Vec<Option<u8>> = if opts.splits.is_empty() {
        vec![None]
    } else {
        opts.splits.iter().map(|&s| Some(s)).collect()
    };
    let weights_label = if opts.random_init {
        "random-init".to_string()
    } else {
        target.weights.display().to_string()
    };
    let mut out = Vec::new();
    let mut per_protocol: BTreeMap<&'static str, Vec<serde_json::Value>> = BTreeMap::new();
    for split in splits {
        let mut recipe = base.clone();
        if let Some(s) = split {
            if !(1..=3).contains(&s) {
                return Err(Error::BadInput(format!(
                    "--splits: split {s} is not 1, 2 or 3"
                )));
            }
            let mut d = recipe.eval_data().clone();
            d.split = s;
            recipe.eval.data = Some(d);
        }
        let dataset = registry::dataset(recipe.eval_data())?;
        let needs_features = opts
            .protocols
            .iter()
            .any(|p| matches!(p, Protocol::Linear | Protocol::Knn));
        let feats = if needs_features {
            let net = load_backbone(&recipe, target, opts.random_init, device)?;
            let f = extract(net.as_ref(), dataset.as_ref(), &recipe, device)?;
            crate::data::bad_videos::BadVideos::open(&target.run_dir).record(&f.skipped)?;
            Some(f)
        } else {
            None
        };
        for &p in &opts.protocols {
            let stem = file_stem(p, opts.random_init, if many { split } else { None });
            let (metrics, counts) = match (p, &feats) {
                (Protocol::Linear, Some(f)) => (
                    serde_json::to_value(linear::probe(
                        f,
                        dataset.num_classes(),
                        &recipe.eval,
                        recipe.train.seed,
                    )?),
                    (f.train.labels.len(), f.test.labels.len(), f.skipped.len()),
                ),
                (Protocol::Knn, Some(f)) => (
                    serde_json::to_value(retrieval::recall_at_k(f, &recipe.eval.k)?),
                    (f.train.labels.len(), f.test.labels.len(), f.skipped.len()),
                ),
                _ => {
                    // Fine-tuning changes the weights: it gets its own fresh copy.
                    let net = load_backbone(&recipe, target, opts.random_init, device)?;
                    let r = finetune::finetune(
                        &recipe,
                        net.as_ref(),
                        dataset.clone(),
                        &eval_dir.join(&stem),
                        opts.resume,
                        device,
                    )?;
                    let n = (
                        dataset.len(crate::data::Split::Train),
                        dataset.len(crate::data::Split::Test),
                        0,
                    );
                    (serde_json::to_value(r), n)
                }
            };
            let metrics = metrics.map_err(|e| Error::Internal(e.to_string()))?;
            let json = serde_json::json!({
                "protocol": p.name(),
                "weights": weights_label,
                "random_init": opts.random_init,
                "run": target.run_dir.display().to_string(),
                "dataset": dataset.describe(),
                "split": recipe.eval_data().split,
                "train_videos": counts.0,
                "test_videos": counts.1,
                "skipped": counts.2,
                "metrics": metrics,
                "eval_recipe": recipe.eval,
            });
            write_json(&eval_dir.join(format!("{stem}.json")), &json)?;
            per_protocol.entry(p.name()).or_default().push(json.clone());
            out.push(json);
        }
    }
    if many {
        for &p in &opts.protocols {
            let runs = &per_protocol[p.name()];
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
            let json = serde_json::json!({
                "protocol": p.name(),
                "weights": weights_label,
                "random_init": opts.random_init,
                "run": target.run_dir.display().to_string(),
                "splits": opts.splits,
                "mean": mean,
                "std": std,
            });
            write_json(
                &eval_dir.join(format!("{}.json", file_stem(p, opts.random_init, None))),
                &json,
            )?;
            out.push(json);
        }
    }
    Ok(out)
}
