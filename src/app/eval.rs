//! `vssl eval`: a run directory's resolved recipe (with `--set` overrides) resolved
//! through the registry, then the [`eval`](crate::eval) protocols on each split.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;

use crate::backbone::Backbone;
use crate::data::bad_videos::BadVideos;
use crate::eval::{
    extract, file_stem, finetune, linear, load_weights, mean_std_of, retrieval, write_json,
    EvalSetup, EvalTarget, Protocol,
};
use crate::recipe::{self, Recipe, RecipeSource};
use crate::run_dir::RunDir;
use crate::telemetry::EventWriter;
use crate::{registry, Error, Result};

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
        load_weights(net.as_ref(), &target.weights, device)?;
    }
    Ok(net)
}

/// Evaluates a run; writes `<run>/eval/<protocol>[-random][-splitN].json` (and, with
/// several splits, `<protocol>[-random].json` holding mean and std); returns the JSON
/// objects in the order written (the summary last).
pub fn evaluate(
    target: &EvalTarget,
    opts: &EvalOptions,
    device: &Device,
) -> Result<Vec<serde_json::Value>> {
    let run = &target.run_dir;
    let recipe_file = run.existing_recipe()?;
    let _lock = crate::lock::RunLock::acquire(run.path(), "vssl eval")?;
    let base: Recipe = recipe::load(&RecipeSource::with_sets(recipe_file, opts.sets.clone()))?;
    let eval_dir = run.eval_dir();
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
    let mut scalars = BTreeMap::new();
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
        let recipe_text = recipe.to_toml();
        let setup = EvalSetup {
            eval: &recipe.eval,
            data: recipe.eval_data(),
            seed: recipe.train.seed,
            recipe: &recipe_text,
        };
        let needs_features = opts
            .protocols
            .iter()
            .any(|p| matches!(p, Protocol::Linear | Protocol::Knn));
        let feats = if needs_features {
            let net = load_backbone(&recipe, target, opts.random_init, device)?;
            let f = extract(net.as_ref(), dataset.as_ref(), &setup, device)?;
            BadVideos::open(run).record(&f.skipped)?;
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
                        &setup,
                        net.as_ref(),
                        dataset.clone(),
                        &run.finetune(&stem),
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
                "run": run.path().display().to_string(),
                "dataset": dataset.describe(),
                "split": recipe.eval_data().split,
                "train_videos": counts.0,
                "test_videos": counts.1,
                "skipped": counts.2,
                "metrics": metrics,
                "eval_recipe": recipe.eval,
            });
            write_json(&run.eval_file(&stem), &json)?;
            tb_scalars(&json["metrics"], &stem, &mut scalars);
            per_protocol.entry(p.name()).or_default().push(json.clone());
            out.push(json);
        }
    }
    if many {
        for &p in &opts.protocols {
            let (mean, std) = mean_std_of(&per_protocol[p.name()]);
            let json = serde_json::json!({
                "protocol": p.name(),
                "weights": weights_label,
                "random_init": opts.random_init,
                "run": run.path().display().to_string(),
                "splits": opts.splits,
                "mean": mean,
                "std": std,
            });
            let stem = file_stem(p, opts.random_init, None);
            write_json(&run.eval_file(&stem), &json)?;
            tb_scalars(&json["mean"], &stem, &mut scalars);
            out.push(json);
        }
    }
    write_tb(target, opts.random_init, &scalars)?;
    Ok(out)
}

/// The evaluation target of a command-line argument. A run directory, or a weights
/// file inside one, is used as it is. Anything else (an `hf://` id, a registry name,
/// an exported folder or a weights file outside a run directory) is resolved to a
/// weights file whose `recipe` metadata (written by `vssl train` and `vssl export`)
/// becomes a run directory at `out` (default `weights/hub/<name>`), where the
/// results are written.
pub fn target(arg: &Path, out: Option<&Path>) -> Result<EvalTarget> {
    let in_run = |p: &Path| {
        (p.is_dir() && RunDir::is_run(p)) || (p.is_file() && p.parent().is_some_and(RunDir::is_run))
    };
    if in_run(arg) {
        return EvalTarget::locate(arg);
    }
    let arg_file = if arg.is_dir() {
        arg.join(crate::run_dir::MODEL_FILE)
    } else {
        arg.to_path_buf()
    };
    let resolved = crate::hub::resolve_path(&arg_file, &crate::hub::HubEnv::from_env())?;
    // The real file (a cache snapshot entry is a symlink into `blobs/`).
    let weights =
        std::fs::canonicalize(&resolved.path).map_err(|e| Error::io(&resolved.path, e))?;
    let meta = crate::io::read_safetensors_metadata(&weights)?;
    let recipe_text = meta.get("recipe").ok_or_else(|| {
        Error::checkpoint(
            &weights,
            "no `recipe` metadata, so there is nothing to evaluate it with; evaluate the run \
             directory it came from",
        )
    })?;
    let label = match (&resolved.entry, &resolved.hub) {
        (Some(e), _) => e.name.clone(),
        (None, Some(h)) if h.revision == crate::hub::id::DEFAULT_REVISION => {
            format!("{}--{}", h.owner, h.name)
        }
        (None, Some(h)) => format!("{}--{}--{}", h.owner, h.name, h.revision.replace('/', "-")),
        (None, None) => arg
            .file_stem()
            .or_else(|| arg.file_name())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "weights".into()),
    };
    let dir = match out {
        Some(o) => o.to_path_buf(),
        None => Path::new("weights").join("hub").join(label),
    };
    let run = RunDir::new(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    crate::io::write_atomic(&run.recipe(), recipe_text.as_bytes())?;
    let model = run.model();
    let same = std::fs::canonicalize(&model).ok() == std::fs::canonicalize(&weights).ok();
    if !same {
        let tmp = crate::run_dir::temp_sibling(&model);
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(&weights, &tmp)
            .or_else(|_| std::fs::copy(&weights, &tmp).map(|_| ()))
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &model).map_err(|e| Error::io(&model, e))?;
    }
    tracing::info!("evaluating {} in {}", weights.display(), dir.display());
    Ok(EvalTarget {
        run_dir: run,
        weights: model,
    })
}

/// `eval/<stem>/<metric>` for each numeric leaf of a protocol's metrics.
fn tb_scalars(metrics: &serde_json::Value, stem: &str, out: &mut BTreeMap<String, f64>) {
    let mut leaves = BTreeMap::new();
    crate::eval::numeric_leaves(metrics, "", &mut leaves);
    out.extend(
        leaves
            .into_iter()
            .map(|(k, v)| (format!("eval/{stem}/{k}"), v)),
    );
}

/// Eval metrics into the run's TensorBoard log at the step of the weights evaluated
/// (0 for a random init), replacing those of an earlier evaluation.
fn write_tb(target: &EvalTarget, random_init: bool, scalars: &BTreeMap<String, f64>) -> Result<()> {
    let step = if random_init {
        0
    } else {
        crate::io::read_safetensors_metadata(&target.weights)?
            .get("step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let mut tb = EventWriter::create(&target.run_dir, &|e| {
        e.tag().is_some_and(|t| scalars.contains_key(t))
    })?;
    for (tag, v) in scalars {
        tb.scalar(step, tag, *v)?;
    }
    Ok(())
}
