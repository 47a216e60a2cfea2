//! `vssl export`: a run directory becomes a Hub model repo folder.
//!
//! - `model.safetensors`: the backbone's tensors only, under torchvision's names (so
//!   `load_state_dict(strict=True)` accepts them once `fc` is an `Identity`), with
//!   metadata `format = "pt"`, the resolved recipe, the vssl version and the input
//!   convention; `--with-heads` keeps the `pretext.*` tensors for resuming pretraining
//!   elsewhere;
//! - with `--finetune STEM`, the best weights of the fine-tuning sub-run `eval/STEM/`
//!   instead (backbone + classifier `fc`), carded as `video-classification` with
//!   `base_model`;
//! - `config.json`: what another tool needs to rebuild the network and feed it;
//! - `README.md`: the model card (YAML front matter with a `model-index` built from
//!   the run's `eval/*.json`, then the method, the results, how to load the weights
//!   in vssl and in PyTorch, and the method's citation).
//!
//! Everything is written to a temporary sibling of `--out` first and renamed into
//! place at the end, so a failed export leaves no half-written folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::import::BackboneSpec;
use crate::backbone::arch::arch_name;
use crate::backbone::{Arch, NormKind};
use crate::eval::numeric_leaves;
use crate::io::{read_safetensors, write_atomic, write_safetensors_atomic};
use crate::recipe::{self, Recipe, RecipeSource};
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The files an export writes.
pub const CONFIG_FILE: &str = "config.json";
pub const CARD_FILE: &str = "README.md";

/// What `vssl export` does.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The run directory (`weights/<run>`).
    pub run: PathBuf,
    /// The folder to write (created; must not exist or be empty).
    pub out: PathBuf,
    /// Keep the method's `pretext.*` heads.
    pub with_heads: bool,
    /// The Hub repo the folder is meant for (`ORG/NAME`), used in the card's loading
    /// snippets; a placeholder when absent.
    pub repo: Option<String>,
    /// The card's `license` (default `mit`).
    pub license: Option<String>,
    /// Export a fine-tuned model instead: the best weights of the fine-tuning sub-run
    /// `eval/<stem>/` (backbone + classifier under torchvision's `fc` names).
    pub finetune: Option<String>,
    /// The Hub repo of the pretrained model a fine-tuned export came from (the card's
    /// `base_model`).
    pub base_model: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub files: Vec<PathBuf>,
    /// Tensors written to `model.safetensors`.
    pub tensors: usize,
    /// Tensors of the run's model left out (heads without `--with-heads`).
    pub dropped: Vec<String>,
    /// Evaluation results carried into the card's `model-index`.
    pub results: usize,
}

/// One evaluation result of the run, as the card reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CardResult {
    /// `eval/<stem>.json`.
    pub stem: String,
    pub protocol: String,
    pub dataset: String,
    pub split: String,
    pub random_init: bool,
    /// Metric name -> value (the numeric leaves of the file's `metrics`, or of `mean`
    /// for a multi-split summary).
    pub metrics: BTreeMap<String, f64>,
}

/// The paper each method follows.
fn citation(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "geometric" => (
            "3DRotNet (rotation prediction)",
            "@article{jing2018self,\n  title={Self-Supervised Spatiotemporal Feature Learning via Video Rotation Prediction},\n  author={Jing, Longlong and Yang, Xiaodong and Liu, Jingen and Tian, Yingli},\n  journal={arXiv preprint arXiv:1811.11387},\n  year={2018}\n}",
        ),
        "speed_sort" => (
            "variable playback speed prediction (speed sorting)",
            "@article{cho2020self,\n  title={Self-Supervised Spatio-Temporal Representation Learning Using Variable Playback Speed Prediction},\n  author={Cho, Hyeon and Kim, Taehoon and Chang, Hyung Jin and Hwang, Wonjun},\n  journal={arXiv preprint arXiv:2003.02692},\n  year={2020}\n}",
        ),
        "temporal_contrast" => (
            "TCLR (temporal contrastive learning)",
            "@article{dave2022tclr,\n  title={TCLR: Temporal Contrastive Learning for Video Representation},\n  author={Dave, Ishan and Gupta, Rohit and Rizve, Mamshad Nayeem and Shah, Mubarak},\n  journal={Computer Vision and Image Understanding},\n  year={2022}\n}",
        ),
        "temporal_discriminative" => (
            "VTDL (temporal discriminative learning)",
            "@article{wang2020self,\n  title={Self-supervised Temporal Discriminative Learning for Video Representation Learning},\n  author={Wang, Jinpeng and Lin, Yiqi and Ma, Andy J. and Yuen, Pong C.},\n  journal={arXiv preprint arXiv:2008.02129},\n  year={2020}\n}",
        ),
        _ => ("a method outside vssl's four families", ""),
    }
}

/// The torchvision constructor of an architecture, when there is one.
fn torchvision_arch(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::R3d18 => Some("r3d_18"),
        Arch::Mc318 => Some("mc3_18"),
        Arch::R2plus1d18 => Some("r2plus1d_18"),
        Arch::R3dSmall | Arch::C3d => None,
    }
}

/// The run's evaluation results (sorted by file name); unreadable files are an error
/// naming them.
pub fn card_results(run: &RunDir) -> Result<Vec<CardResult>> {
    let mut out = Vec::new();
    for f in run.eval_files() {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::BadInput(format!("{}: not valid JSON: {e}", f.display())))?;
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let mut metrics = BTreeMap::new();
        let split = if let Some(m) = v.get("metrics") {
            numeric_leaves(m, "", &mut metrics);
            match v.get("split").and_then(Value::as_u64) {
                Some(n) => format!("split{n}"),
                None => String::new(),
            }
        } else if let Some(m) = v.get("mean") {
            numeric_leaves(m, "", &mut metrics);
            let splits: Vec<String> = v
                .get("splits")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            format!("mean over splits {}", splits.join(","))
        } else {
            continue;
        };
        out.push(CardResult {
            stem,
            protocol: s("protocol"),
            dataset: s("dataset"),
            split,
            random_init: v
                .get("random_init")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            metrics,
        });
    }
    Ok(out)
}

/// A string as a YAML scalar (JSON's quoting is valid YAML).
fn yq(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A number as YAML (JSON's shortest round-trip form).
fn yn(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_else(|_| "null".into())
}

fn task_of(protocol: &str) -> (&'static str, &'static str) {
    match protocol {
        "linear" => ("video-classification", "Linear probe (frozen backbone)"),
        "finetune" => ("video-classification", "Fine-tuning"),
        "knn" => (
            "video-retrieval",
            "Nearest-neighbour retrieval (frozen backbone)",
        ),
        _ => ("video-classification", "Evaluation"),
    }
}

fn dataset_tag(kind: &str) -> String {
    match kind {
        "ucf101" => "ucf101".into(),
        "hmdb51" => "hmdb51".into(),
        "synthetic" => "vssl-synthetic".into(),
        other => other.into(),
    }
}

struct CardInput<'a> {
    name: &'a str,
    repo: &'a str,
    license: &'a str,
    method: &'a str,
    recipe_text: &'a str,
    recipe: &'a Recipe,
    datasets: Vec<String>,
    results: &'a [CardResult],
    spec: &'a BackboneSpec,
    feature_dim: usize,
    with_heads: bool,
    /// Classes of a fine-tuned export's classifier.
    num_classes: Option<usize>,
    base_model: Option<&'a str>,
}

/// The model card (front matter + body).
fn card(c: &CardInput) -> String {
    let (method_name, bibtex) = citation(c.method);
    let mut y = String::from("---\n");
    y.push_str(&format!("license: {}\n", yq(c.license)));
    y.push_str("library_name: vssl\n");
    y.push_str(match c.num_classes {
        Some(_) => "pipeline_tag: video-classification\n",
        None => "pipeline_tag: feature-extraction\n",
    });
    if let Some(b) = c.base_model {
        y.push_str(&format!("base_model: {}\n", yq(b)));
    }
    y.push_str("tags:\n");
    for t in [
        "video",
        "self-supervised",
        "action-recognition",
        "vssl",
        c.method,
    ] {
        y.push_str(&format!("- {}\n", yq(t)));
    }
    y.push_str(&format!("- {}\n", yq(&arch_name(c.spec.cfg.arch))));
    if !c.datasets.is_empty() {
        y.push_str("datasets:\n");
        for d in &c.datasets {
            y.push_str(&format!("- {}\n", yq(d)));
        }
    }
    let own: Vec<&CardResult> = c.results.iter().filter(|r| !r.random_init).collect();
    if !own.is_empty() {
        y.push_str("model-index:\n");
        y.push_str(&format!("- name: {}\n  results:\n", yq(c.name)));
        for r in &own {
            let (ty, tname) = task_of(&r.protocol);
            y.push_str(&format!(
                "  - task:\n      type: {}\n      name: {}\n",
                yq(ty),
                yq(tname)
            ));
            y.push_str(&format!(
                "    dataset:\n      type: {}\n      name: {}\n      split: {}\n",
                yq(&dataset_tag(
                    r.dataset.split(['(', ' ']).next().unwrap_or("")
                )),
                yq(&r.dataset),
                yq(&r.split)
            ));
            y.push_str("    metrics:\n");
            for (k, v) in &r.metrics {
                y.push_str(&format!(
                    "    - type: {}\n      name: {}\n      value: {}\n",
                    yq(k),
                    yq(&format!("{} {k}", r.protocol)),
                    yn(*v)
                ));
            }
        }
    }
    y.push_str("---\n\n");

    let b = &c.spec.cfg;
    let d = &c.recipe.data;
    let mean = d.augment.mean;
    let std = d.augment.std;
    let mut body = format!(
        "# {name}\n\nA {arch} video encoder pretrained without labels by **{method_name}** \
         with [vssl](https://github.com/vssl/vssl) (recipe `{name}`){tuned}.\n\n\
         **Input:** RGB clips `[N, 3, T, H, W]` (T = {t} frames, {s}x{s} pixels), values in \
         [0, 1] normalised per channel with mean {mean:?} and std {std:?}. **Output:** {out}.\n\n",
        tuned = match c.num_classes {
            Some(_) => ", then fine-tuned with labels",
            None => "",
        },
        out = match c.num_classes {
            Some(n) => format!("class logits `[N, {n}]` (classifier `fc`)"),
            None => format!(
                "globally average-pooled features of dimension {} (no classifier)",
                c.feature_dim
            ),
        },
        name = c.name,
        arch = arch_name(b.arch),
        t = c.spec.frames,
        s = d.size,
    );
    if c.with_heads {
        body.push_str(
            "The file also holds the method's `pretext.*` heads, for resuming pretraining.\n\n",
        );
    }
    body.push_str("## Results\n\n");
    if c.results.is_empty() {
        body.push_str("No evaluation was run before export.\n\n");
    } else {
        body.push_str("| protocol | weights | dataset | split | metric | value |\n| --- | --- | --- | --- | --- | --- |\n");
        for r in c.results {
            for (k, v) in &r.metrics {
                body.push_str(&format!(
                    "| {} | {} | {} | {} | {k} | {v:.4} |\n",
                    r.protocol,
                    if r.random_init {
                        "random init"
                    } else {
                        "these"
                    },
                    r.dataset,
                    r.split
                ));
            }
        }
        body.push('\n');
    }
    body.push_str(&format!(
        "## Use in vssl\n\n```sh\nvssl extract --weights hf://{repo} --input clip.mp4 --output features.safetensors\n```\n\n\
         or in a recipe, to start from these weights:\n\n```toml\n[backbone]\ninit = \"hf://{repo}\"\n```\n\n",
        repo = c.repo
    ));
    body.push_str("## Use in PyTorch\n\n");
    match torchvision_arch(b.arch) {
        Some(tv) if b.norm == NormKind::Bn && !b.temporal_dilation_last_stage => {
            body.push_str(&format!(
                "```python\nimport torch, torchvision\nfrom huggingface_hub import hf_hub_download\nfrom safetensors.torch import load_file\n\n\
                 {build}\
                 model.load_state_dict(load_file(hf_hub_download(\"{repo}\", \"model.safetensors\")), strict={strict})\nmodel.eval()\n\
                 mean = torch.tensor({mean:?}).view(1, 3, 1, 1, 1)\nstd = torch.tensor({std:?}).view(1, 3, 1, 1, 1)\n\
                 x = torch.rand(1, 3, {t}, {s}, {s})  # RGB in [0, 1]\n{out} = model((x - mean) / std)\n```\n\n",
                build = match c.num_classes {
                    Some(n) => format!("model = torchvision.models.video.{tv}(num_classes={n})\n"),
                    None => format!(
                        "model = torchvision.models.video.{tv}()\nmodel.fc = torch.nn.Identity()  # backbone only\n"
                    ),
                },
                out = if c.num_classes.is_some() { "logits" } else { "features" },
                repo = c.repo,
                strict = if c.with_heads { "False" } else { "True" },
                t = c.spec.frames,
                s = d.size,
            ));
        }
        _ => body.push_str(&format!(
            "The tensors carry torchvision's `VideoResNet` / VCOP's C3D names, but `{}` \
             (norm `{:?}`) has no torchvision constructor: build the same network from \
             `config.json` (widths, layers, norm) and load `model.safetensors` into it.\n\n",
            arch_name(b.arch),
            b.norm
        )),
    }
    body.push_str(&format!(
        "## Recipe\n\n```toml\n{}\n```\n\n",
        c.recipe_text.trim_end()
    ));
    if !bibtex.is_empty() {
        body.push_str(&format!("## Citation\n\n```bibtex\n{bibtex}\n```\n"));
    }
    y + &body
}

/// Exports a run (see the module docs).
pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    let run = RunDir::new(&opts.run);
    let recipe_file = run.existing_recipe()?;
    let model_file = run.model();
    if !model_file.is_file() {
        return Err(Error::BadInput(format!(
            "{}: missing; has the run finished (vssl train)?",
            model_file.display()
        )));
    }
    if opts.out.exists()
        && std::fs::read_dir(&opts.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::BadInput(format!(
            "{}: exists and is not empty; export into a new folder",
            opts.out.display()
        )));
    }
    let recipe_text =
        std::fs::read_to_string(&recipe_file).map_err(|e| Error::io(&recipe_file, e))?;
    let recipe = recipe::load(&RecipeSource::file(&recipe_file))?;
    let table: toml::Table = toml::from_str(&recipe_text).map_err(|e| Error::Recipe {
        layer: recipe_file.display().to_string(),
        key: String::new(),
        message: e.to_string(),
    })?;
    let kind_of = |section: &str| {
        table
            .get(section)
            .and_then(|s| s.get("kind"))
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string()
    };
    let method = kind_of("method");

    let model_file = match &opts.finetune {
        None => model_file,
        Some(stem) => {
            if stem.is_empty()
                || !stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            {
                return Err(Error::BadInput(format!(
                    "--finetune `{stem}`: expected the name of a fine-tuning result under \
                     eval/ (e.g. finetune)"
                )));
            }
            let best = run.finetune(stem).best();
            if !best.is_file() {
                return Err(Error::BadInput(format!(
                    "{}: missing; run `vssl eval {} --protocol finetune` first",
                    best.display(),
                    run.path().display()
                )));
            }
            best
        }
    };
    let (mut tensors, _) = read_safetensors(&model_file, &Device::Cpu)?;
    let mut cfg = recipe.backbone.clone();
    cfg.num_classes = None;
    cfg.init = None;
    if opts.finetune.is_some() {
        // The fine-tuning head is `fc`; C3D's classifier is called `linear`.
        let prefix = crate::backbone::arch::classifier_prefix(cfg.arch);
        let head: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with("fc."))
            .cloned()
            .collect();
        for k in head {
            if let Some(t) = tensors.remove(&k) {
                tensors.insert(format!("{prefix}.{}", &k[3..]), t);
            }
        }
        let w = tensors.get(&format!("{prefix}.weight")).ok_or_else(|| {
            Error::checkpoint(
                &model_file,
                "no fine-tuning classifier (`fc.weight`) in the file",
            )
        })?;
        cfg.num_classes = Some(w.dims()[0]);
    }
    let spec = BackboneSpec {
        cfg,
        frames: recipe.data.frames,
    };
    let net = spec.build(&Device::Cpu)?;
    let wanted: Vec<String> = net.vars().all().into_iter().map(|(k, _)| k).collect();
    let mut kept: Vec<(String, Tensor)> = Vec::new();
    let mut dropped = Vec::new();
    for k in &wanted {
        let t = tensors.get(k).ok_or_else(|| {
            Error::checkpoint(&model_file, format!("backbone tensor `{k}` is missing"))
        })?;
        kept.push((k.clone(), t.clone()));
    }
    for (k, t) in &tensors {
        if wanted.contains(k) {
            continue;
        }
        if opts.with_heads && k.starts_with("pretext.") {
            kept.push((k.clone(), t.clone()));
        } else {
            dropped.push(k.clone());
        }
    }

    let d = &recipe.data;
    let input = json!({
        "channels": "RGB", "layout": "NCTHW", "value_range": [0.0, 1.0],
        "mean": d.augment.mean, "std": d.augment.std, "frames": spec.frames, "size": d.size,
    });
    let mut meta: HashMap<String, String> = spec.metadata().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    meta.insert("recipe".into(), recipe_text.clone());
    meta.insert("vssl_version".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert("input".into(), input.to_string());
    meta.insert("method".into(), method.clone());
    meta.insert("run".into(), recipe.name.clone());

    let b = &spec.cfg;
    let mut config = json!({
        "library_name": "vssl",
        "vssl_version": env!("CARGO_PKG_VERSION"),
        "arch": arch_name(b.arch),
        "torchvision_arch": torchvision_arch(b.arch),
        "norm": b.norm,
        "widths": b.widths,
        "layers": b.layers,
        "temporal_dilation_last_stage": b.temporal_dilation_last_stage,
        "feature_dim": net.out_channels(),
        "frames": spec.frames,
        "size": d.size,
        "input": input,
        "method": method,
        "method_config": table.get("method"),
        "pretraining_data": table.get("data"),
        "with_heads": opts.with_heads,
        "num_classes": spec.cfg.num_classes,
        "run": recipe.name,
    });
    if b.norm == NormKind::Tgn {
        config["tgn_groups"] = json!(b.tgn_groups);
    }

    let results = card_results(&run)?;
    let mut datasets = vec![dataset_tag(&kind_of("data"))];
    if let Some(e) = table.get("eval").and_then(|e| e.get("data")) {
        if let Some(k) = e.get("kind").and_then(|k| k.as_str()) {
            datasets.push(dataset_tag(k));
        }
    }
    datasets.dedup();
    let repo = opts
        .repo
        .clone()
        .unwrap_or_else(|| format!("ORG/{}", recipe.name));
    let card_text = card(&CardInput {
        name: &recipe.name,
        repo: &repo,
        license: opts.license.as_deref().unwrap_or("mit"),
        method: &method,
        recipe_text: &recipe_text,
        recipe: &recipe,
        datasets,
        results: &results,
        spec: &spec,
        feature_dim: net.out_channels(),
        with_heads: opts.with_heads,
        num_classes: spec.cfg.num_classes,
        base_model: opts.base_model.as_deref(),
    });

    // Write into a temporary sibling, then rename it into place.
    let parent = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = crate::run_dir::temp_sibling(&opts.out);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let write = || -> Result<()> {
        write_safetensors_atomic(&tmp.join(crate::run_dir::MODEL_FILE), &kept, &meta)?;
        let cfg_text = serde_json::to_string_pretty(&config)
            .map_err(|e| Error::Internal(e.to_string()))?
            + "\n";
        write_atomic(&tmp.join(CONFIG_FILE), cfg_text.as_bytes())?;
        write_atomic(&tmp.join(CARD_FILE), card_text.as_bytes())?;
        if opts.out.exists() {
            std::fs::remove_dir(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
        }
        std::fs::rename(&tmp, &opts.out).map_err(|e| Error::io(&opts.out, e))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(ExportReport {
        files: [crate::run_dir::MODEL_FILE, CONFIG_FILE, CARD_FILE]
            .iter()
            .map(|f| opts.out.join(f))
            .collect(),
        tensors: kept.len(),
        dropped,
        results: results.iter().filter(|r| !r.random_init).count(),
    })
}
