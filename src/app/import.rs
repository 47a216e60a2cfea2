//! Importing PyTorch checkpoints (`vssl import`): a `.pth` state dict of a torchvision
//! video model (or VCOP's C3D) becomes a vssl weights file.
//!
//! Reading goes through candle's pickle support (`candle_core::pickle`), which
//! understands the zip-based `torch.save` format (PyTorch 1.6 and later). Accepted
//! layouts: a plain state dict, or a dict wrapping one under `state_dict` or `model`
//! (the usual training-script checkpoints); `module.` prefixes (DataParallel /
//! DistributedDataParallel) are stripped. Tensors of dtypes candle cannot hold
//! (e.g. int32, bool) are skipped by the reader and therefore show up as missing.
//! An `nn.Sequential(backbone, head)` dict (keys `0.*`, `1.*`, as TCLR releases its
//! weights) is read as the backbone `0`. The input may be a path, an `hf://` id or a
//! registry name ([`crate::hub::resolve`]).
//!
//! The backbone is chosen with [`BackboneArgs`]: `--arch`, optionally a recipe whose
//! `[backbone]` section (and `data.frames`) is used, and `--set key=value` overrides of
//! backbone keys (`--set backbone.widths=[2,2,2,2]`, the `backbone.` prefix is
//! optional; `--set data.frames=8` sets the clip length the backbone is built for, which
//! only matters for TGN). When the file has a classifier (`fc.weight`, C3D:
//! `linear.weight`) and `num_classes` is not set, the classifier is built with the
//! file's class count so it is imported too.
//!
//! The output holds every tensor of the built backbone under its torchvision name (the
//! same names as the input, `num_batches_tracked` as i64), with metadata
//! `format = "pt"`, `arch`, `source` (the input path), `backbone` (the backbone section
//! as TOML) and `frames`, so `vssl extract` can rebuild the same network without being
//! told the architecture again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::backbone::arch::{arch_name, classifier_prefix, parse_arch};
use crate::backbone::{self, Arch, Backbone, BackboneConfig};
use crate::io::write_safetensors_atomic;
use crate::nn::{LoadReport, VarStore};
use crate::recipe::{self, RecipeSource};
use crate::{Error, Result};

/// How the user describes the backbone on the command line (lowest to highest
/// precedence after the weights file's own metadata): `recipe`, `arch`, `sets`.
#[derive(Debug, Clone, Default)]
pub struct BackboneArgs {
    /// `--arch`: `r3d_18`, `mc3_18`, `r2plus1d_18`, `r3d_small` or `c3d`.
    pub arch: Option<String>,
    /// `--recipe`: take `[backbone]` and `data.frames` from this recipe (layered as
    /// `vssl recipe` resolves it, including `VSSL_` environment variables).
    pub recipe: Option<PathBuf>,
    /// `--set key=value`: backbone keys (`backbone.` prefix optional) or `data.frames`.
    pub sets: Vec<String>,
}

/// A backbone configuration and the clip length it is built for (TGN's group counts
/// are clamped to the time steps each layer sees, so parameter shapes depend on it).
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneSpec {
    pub cfg: BackboneConfig,
    pub frames: usize,
}

impl BackboneSpec {
    /// Builds the backbone with fresh parameters (seed 0) on `device`.
    pub fn build(&self, device: &Device) -> Result<Box<dyn Backbone>> {
        let vs = VarStore::new(device, 0);
        backbone::build(&self.cfg, &vs, self.frames)
    }

    /// The metadata entries that describe this backbone (`arch`, `backbone`, `frames`).
    pub fn metadata(&self) -> Vec<(String, String)> {
        vec![
            ("arch".into(), arch_name(self.cfg.arch)),
            (
                "backbone".into(),
                toml::to_string(&self.cfg).unwrap_or_default(),
            ),
            ("frames".into(), self.frames.to_string()),
        ]
    }
}

/// Reads a backbone spec out of weights metadata: the `backbone` TOML and `frames`
/// written by `vssl import`, or the `[backbone]` section and `data.frames` of the
/// resolved recipe `vssl train` stores. `Ok(None)` when neither is there.
pub fn spec_from_metadata(
    path: &Path,
    meta: &HashMap<String, String>,
) -> Result<Option<BackboneSpec>> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::checkpoint(path, format!("metadata `{what}` is not valid: {e}"))
    };
    if let Some(text) = meta.get("backbone") {
        let cfg: BackboneConfig = toml::from_str(text).map_err(|e| bad("backbone", &e))?;
        let frames = match meta.get("frames") {
            Some(f) => f.trim().parse().map_err(|e| bad("frames", &e))?,
            None => 16,
        };
        return Ok(Some(BackboneSpec { cfg, frames }));
    }
    if let Some(text) = meta.get("recipe") {
        let table: toml::Table = toml::from_str(text).map_err(|e| bad("recipe", &e))?;
        let cfg = match table.get("backbone") {
            Some(v) => v.clone().try_into().map_err(|e| bad("recipe", &e))?,
            None => BackboneConfig::default(),
        };
        let frames = table
            .get("data")
            .and_then(|d| d.get("frames"))
            .and_then(|f| f.as_integer())
            .map(|f| f.max(1) as usize)
            .unwrap_or_else(|| recipe::DataConfig::default().frames);
        return Ok(Some(BackboneSpec { cfg, frames }));
    }
    Ok(None)
}

fn recipe_err(layer: &str, key: &str, message: impl Into<String>) -> Error {
    Error::Recipe {
        layer: layer.to_string(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Resolves the backbone from, lowest to highest: `base` (typically the weights
/// file's metadata), `args.recipe`, `args.arch`, `args.sets`. `default_frames` is the
/// clip length when nothing else gives one. An architecture must come from somewhere.
pub fn resolve_backbone(
    args: &BackboneArgs,
    base: Option<BackboneSpec>,
    default_frames: usize,
) -> Result<BackboneSpec> {
    let mut have_arch = base.is_some();
    let mut spec = base.unwrap_or(BackboneSpec {
        cfg: BackboneConfig::default(),
        frames: default_frames,
    });
    if let Some(file) = &args.recipe {
        let r = recipe::load(&RecipeSource::file(file))?;
        spec = BackboneSpec {
            cfg: r.backbone,
            frames: r.data.frames,
        };
        have_arch = true;
    }
    if let Some(a) = &args.arch {
        spec.cfg.arch = parse_arch(a)?;
        have_arch = true;
    }
    let mut table = toml::Value::try_from(&spec.cfg)
        .map_err(|e| Error::Internal(format!("backbone config as TOML: {e}")))?;
    for kv in &args.sets {
        let layer = format!("--set {kv}");
        let (key, raw) = kv
            .split_once('=')
            .ok_or_else(|| recipe_err(&layer, kv, "expected key=value"))?;
        let key = key.trim();
        let raw = raw.trim();
        // The value is TOML (2, true, [1, 2], "text"); anything else is taken as a string.
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
            Err(_) => toml::Value::String(raw.to_string()),
        };
        if key == "data.frames" {
            let f = value
                .as_integer()
                .filter(|f| *f >= 1)
                .ok_or_else(|| recipe_err(&layer, key, "must be a positive integer"))?;
            spec.frames = f as usize;
            continue;
        }
        let field = key.strip_prefix("backbone.").unwrap_or(key);
        if field.is_empty() || field.contains('.') {
            return Err(recipe_err(
                &layer,
                key,
                "expected a backbone key (backbone.widths=[2,2,2,2]) or data.frames",
            ));
        }
        if let toml::Value::Table(t) = &mut table {
            t.insert(field.to_string(), value);
        }
        if field == "arch" {
            have_arch = true;
        }
        // Check after each override so an error names the `--set` that caused it.
        table
            .clone()
            .try_into::<BackboneConfig>()
            .map_err(|e| recipe_err(&layer, &format!("backbone.{field}"), e.to_string().trim()))?;
    }
    spec.cfg = table
        .try_into()
        .map_err(|e| recipe_err("--set", "backbone", e.to_string()))?;
    if !have_arch {
        return Err(Error::BadInput(
            "no backbone architecture given: pass --arch (or --recipe)".into(),
        ));
    }
    validate(&spec)?;
    Ok(spec)
}

/// The backbone range checks of [`crate::recipe::Recipe::validate`].
fn validate(spec: &BackboneSpec) -> Result<()> {
    let b = &spec.cfg;
    let bad = |key: &str, m: String| Err(recipe_err("backbone", key, m));
    for (key, vals) in [
        ("backbone.widths", &b.widths[..]),
        ("backbone.layers", &b.layers[..]),
        ("backbone.tgn_groups", &b.tgn_groups[..]),
    ] {
        if let Some(i) = vals.iter().position(|v| *v == 0) {
            return bad(key, format!("entry {i} must be at least 1"));
        }
    }
    if b.num_classes == Some(0) {
        return bad("backbone.num_classes", "must be at least 1".into());
    }
    if b.arch == Arch::C3d && b.temporal_dilation_last_stage {
        return bad(
            "backbone.temporal_dilation_last_stage",
            "only applies to the ResNet archs, not c3d".into(),
        );
    }
    if spec.frames == 0 {
        return bad("data.frames", "must be at least 1".into());
    }
    Ok(())
}

/// Reads the tensors of a PyTorch checkpoint: a state dict, or one wrapped under
/// `state_dict` or `model`; leading `module.` prefixes are stripped. Errors name the
/// file: unreadable, not a zip-based `torch.save` file, no tensors, or two keys that
/// are the same once prefixes are stripped. A panic of the pickle reader on a
/// crafted file is caught and reported as such an error.
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "no such file"));
    }
    let not_pth = |e: &dyn std::fmt::Display| {
        Error::checkpoint(
            path,
            format!("not a readable PyTorch checkpoint (zip-based torch.save file expected): {e}"),
        )
    };
    // Lengths and shapes are checked before candle's reader trusts them.
    let sizes = super::pth_scan::scan(path).map_err(|e| not_pth(&e))?;
    let read = |key: Option<&str>| -> std::result::Result<Vec<(String, Tensor)>, String> {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let pth = candle_core::pickle::PthTensors::new(path, key)?;
            let mut out = Vec::new();
            for (name, info) in pth.tensor_infos() {
                super::pth_scan::check_tensor(&sizes, info).map_err(candle_core::Error::Msg)?;
                if let Some(t) = pth.get(name)? {
                    out.push((name.clone(), t));
                }
            }
            candle_core::Result::Ok(out)
        }));
        match caught {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the pickle reader failed on malformed data".into()),
        }
    };
    let mut raw = read(None).map_err(|e| not_pth(&e))?;
    for key in ["state_dict", "model"] {
        if !raw.is_empty() {
            break;
        }
        // A missing key is just "not this wrapper".
        if let Ok(t) = read(Some(key)) {
            raw = t;
        }
    }
    if raw.is_empty() {
        return Err(Error::checkpoint(
            path,
            "no tensors found: expected a state dict, or one under `state_dict` or `model`",
        ));
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = BTreeMap::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    for (name, t) in raw {
        let mut key = name.as_str();
        while let Some(rest) = key.strip_prefix("module.") {
            key = rest;
        }
        if let Some(first) = origin.get(key) {
            return Err(Error::checkpoint(
                path,
                format!("keys `{first}` and `{name}` both become `{key}` without `module.`"),
            ));
        }
        origin.insert(key.to_string(), name.clone());
        out.insert(key.to_string(), t);
    }
    // `nn.Sequential(backbone, head)` (TCLR's released weights): every key starts with
    // a sub-module index; the backbone is sub-module 0, the others keep their prefix
    // (and show up as unused).
    let indexed = |k: &str| {
        k.split_once('.')
            .is_some_and(|(p, _)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if out.keys().all(|k| indexed(k)) && out.keys().any(|k| k.starts_with("0.")) {
        out = out
            .into_iter()
            .map(|(k, t)| match k.strip_prefix("0.") {
                Some(rest) => (rest.to_string(), t),
                None => (k, t),
            })
            .collect();
    }
    Ok(out)
}

/// What `vssl import` does.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The `.pth` file.
    pub input: PathBuf,
    /// The safetensors file to write.
    pub out: PathBuf,
    pub backbone: BackboneArgs,
    /// Keep fresh initial values for tensors the file lacks instead of failing.
    pub allow_missing: bool,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The backbone that was built (with `num_classes` as inferred).
    pub spec: BackboneSpec,
    /// Applied, missing (kept at initialisation) and unused (ignored) tensor names.
    pub load: LoadReport,
    /// Tensors written.
    pub written: usize,
    /// Trainable parameters of the written backbone (classifier included).
    pub params: usize,
}

/// Shortens a list of names for an error message.
fn some_names(names: &[String]) -> String {
    const N: usize = 8;
    let mut s = names.iter().take(N).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > N {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

/// Imports a PyTorch checkpoint (see the module docs). A shape mismatch is an error
/// naming the tensor; tensors the backbone needs but the file lacks are an error unless
/// `allow_missing`; keys the backbone does not use are reported, not fatal. The output
/// is written atomically and only on success.
pub fn import(opts: &ImportOptions) -> Result<ImportReport> {
    let input = crate::hub::resolve_path(&opts.input, &crate::hub::HubEnv::from_env())?.path;
    let tensors = read_pth(&input)?;
    let mut spec = resolve_backbone(&opts.backbone, None, 16)?;
    if spec.cfg.num_classes.is_none() {
        let fc = format!("{}.weight", classifier_prefix(spec.cfg.arch));
        if let Some(w) = tensors.get(&fc) {
            if w.rank() == 2 && w.dims()[0] > 0 {
                spec.cfg.num_classes = Some(w.dims()[0]);
            }
        }
    }
    let net = spec.build(&Device::Cpu)?;
    let load = net
        .vars()
        .load(&tensors)
        .map_err(|e| Error::checkpoint(&input, e.to_string()))?;
    if !load.missing.is_empty() && !opts.allow_missing {
        let mut msg = format!(
            "{} of the {} tensors of {} are missing from the file: {} (pass --allow-missing \
             to keep their initial values)",
            load.missing.len(),
            load.missing.len() + load.applied.len(),
            arch_name(spec.cfg.arch),
            some_names(&load.missing)
        );
        if !load.unused.is_empty() {
            msg.push_str(&format!(
                "; the file has these unused keys: {}",
                some_names(&load.unused)
            ));
        }
        return Err(Error::checkpoint(&input, msg));
    }
    let out: Vec<(String, Tensor)> = net
        .vars()
        .all()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let mut meta: HashMap<String, String> = spec.metadata().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    meta.insert("source".into(), opts.input.display().to_string());
    meta.insert("vssl_version".into(), env!("CARGO_PKG_VERSION").to_string());
    write_safetensors_atomic(&opts.out, &out, &meta)?;
    Ok(ImportReport {
        params: net.param_count(),
        written: out.len(),
        load,
        spec,
    })
}
