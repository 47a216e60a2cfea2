//! Sweep expansion: `[grid]` (cartesian product) and `[zip]` (lists varied together)
//! points from `base`, explicit `[[runs]]` points, each repeated per seed; then every
//! point's recipe is resolved through the recipe layers (the point's overrides are
//! the "sweep point" layer) so that a bad key fails before anything runs. A point's
//! run directory is named from its overrides plus a short hash of its resolved recipe.

use std::path::{Path, PathBuf};

use super::spec::SweepSpec;
use crate::eval::Protocol;
use crate::recipe::{self, Recipe, RecipeSource};
use crate::run_dir::PointInfo;
use crate::seed::fnv1a;
use crate::{Error, Result};

/// One run of a sweep.
#[derive(Debug, Clone)]
pub struct Point {
    /// Position in the sweep (the Slurm array index).
    pub index: usize,
    /// `rotation,seed=0`, `lr=0.1,tgn_groups=1-1-1-1-1`: overrides in short form.
    pub label: String,
    /// The label without the seed: the row a comparison groups seeds into.
    pub group: String,
    /// Run directory: `<sweep dir>/<label>-<hash>`.
    pub dir: PathBuf,
    /// The recipe the point starts from.
    pub base: PathBuf,
    /// The point's overrides (dotted key, TOML value), seed included.
    pub overrides: Vec<(String, toml::Value)>,
    pub seed: Option<u64>,
    /// False: no pretraining, the untrained backbone is evaluated (`--random-init`).
    pub pretrain: bool,
    /// The fully resolved recipe.
    pub recipe: Recipe,
    /// 8 hex digits of FNV-1a over the resolved recipe (and the pretrain flag).
    pub hash: String,
}

impl Point {
    pub fn info(&self, sweep: &str, eval: &[Protocol]) -> PointInfo {
        PointInfo {
            sweep: sweep.to_string(),
            index: self.index,
            label: self.label.clone(),
            group: self.group.clone(),
            base: super::shown(&self.base),
            pretrain: self.pretrain,
            seed: self.seed,
            eval: eval.iter().map(|p| p.name().to_string()).collect(),
            hash: self.hash.clone(),
            overrides: self
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Where an override came from, for error messages.
#[derive(Clone)]
struct Origin(String);

/// A point before its recipe is resolved.
struct Draft {
    name: Option<String>,
    base: PathBuf,
    /// (key, value, origin)
    overrides: Vec<(String, toml::Value, Origin)>,
    pretrain: bool,
}

/// The cartesian product of `[grid]` (last key fastest), then `[zip]` innermost.
fn grid_points(spec: &SweepSpec) -> Vec<Vec<(String, toml::Value, Origin)>> {
    let mut points: Vec<Vec<(String, toml::Value, Origin)>> = vec![vec![]];
    for (k, values) in &spec.grid {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((k.clone(), v.clone(), Origin("[grid]".into())));
                    q
                })
            })
            .collect();
    }
    if let Some((_, first)) = spec.zip.first() {
        points = points
            .into_iter()
            .flat_map(|p| {
                (0..first.len()).map(move |i| {
                    let mut q = p.clone();
                    for (k, vs) in &spec.zip {
                        q.push((k.clone(), vs[i].clone(), Origin("[zip]".into())));
                    }
                    q
                })
            })
            .collect();
    }
    points
}

/// The sweep's `[set]` overrides, which every point starts from.
fn common(spec: &SweepSpec) -> Vec<(String, toml::Value, Origin)> {
    spec.set
        .iter()
        .map(|(k, v)| (k.clone(), v.clone(), Origin("[set]".into())))
        .collect()
}

fn drafts(spec: &SweepSpec) -> Vec<Draft> {
    let mut out = Vec::new();
    let has_axes = !spec.grid.is_empty() || !spec.zip.is_empty();
    if let Some(base) = &spec.base {
        if has_axes || spec.runs.is_empty() {
            for overrides in grid_points(spec) {
                out.push(Draft {
                    name: None,
                    base: base.clone(),
                    overrides,
                    pretrain: true,
                });
            }
        }
    }
    for r in &spec.runs {
        out.push(Draft {
            name: Some(r.name.clone()),
            base: r.base.clone(),
            overrides: r
                .set
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.clone(),
                        Origin(format!("[[runs]] `{}` set", r.name)),
                    )
                })
                .collect(),
            pretrain: r.pretrain,
        });
    }
    out
}

/// A value in a run-directory name: `0.1`, `tgn`, `1-1-1-1-1`.
fn slug(v: &toml::Value) -> String {
    let raw = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(slug).collect::<Vec<_>>().join("-"),
        other => other.to_string(),
    };
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.chars().take(40).collect()
}

/// The short names of the varied keys: the last dotted segment, or the whole key
/// when two varied keys share a last segment.
fn short_keys(keys: &[&str]) -> Vec<String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.iter()
        .map(|k| {
            let l = last(k);
            let clash = keys.iter().any(|o| o != k && last(o) == l);
            if clash {
                k.to_string()
            } else {
                l
            }
        })
        .collect()
}

/// Expands and resolves every point; `sets` are `--set` overrides applied to all
/// points (layer 5), `out` the sweep's directory.
pub fn expand(spec: &SweepSpec, sets: &[String], out: &Path) -> Result<Vec<Point>> {
    let drafts = drafts(spec);
    let all_keys: Vec<&str> = {
        let mut v: Vec<&str> = drafts
            .iter()
            .flat_map(|d| d.overrides.iter().map(|(k, _, _)| k.as_str()))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let shorts = short_keys(&all_keys);
    let short = |k: &str| {
        let i = all_keys.iter().position(|x| *x == k).unwrap_or(0);
        shorts[i].clone()
    };
    let seeds: Vec<Option<u64>> = match &spec.seeds {
        Some(s) => s.iter().map(|&x| Some(x)).collect(),
        None => vec![None],
    };
    let common = common(spec);
    let mut points = Vec::new();
    // Seeds outermost: a first full comparison (every arm at the first seed) comes early.
    for seed in &seeds {
        for d in &drafts {
            let mut parts: Vec<String> = d.name.iter().cloned().collect();
            parts.extend(
                d.overrides
                    .iter()
                    .map(|(k, v, _)| format!("{}={}", short(k), slug(v))),
            );
            if parts.is_empty() {
                parts.push(
                    d.base
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_else(|| "base".into()),
                );
            }
            let group = parts.join(",");
            let label = match seed {
                Some(s) => format!("{group},seed={s}"),
                None => group.clone(),
            };
            let mut overrides = d.overrides.clone();
            if let Some(s) = seed {
                overrides.push((
                    "train.seed".into(),
                    toml::Value::Integer(*s as i64),
                    Origin("seeds".into()),
                ));
            }
            overrides.push((
                "name".into(),
                toml::Value::String(label.clone()),
                Origin("(run name)".into()),
            ));
            // `[set]` goes first, so a point's own override of the same key wins.
            let mut layered = common.clone();
            layered.extend(overrides.iter().cloned());
            let recipe = resolve(spec, d, &layered, sets, &label)?;
            let mut text = recipe.to_toml();
            if !d.pretrain {
                text.push_str("\n# pretrain = false\n");
            }
            let hash = format!("{:08x}", fnv1a(text.as_bytes()) >> 32);
            overrides.pop(); // the name is not an override the user chose
                             // Long labels are cut (file names have a length limit); the hash keeps them apart.
            let stem: String = label.chars().take(120).collect();
            points.push(Point {
                index: points.len(),
                dir: out.join(format!("{stem}-{hash}")),
                label,
                group,
                base: d.base.clone(),
                overrides: overrides.into_iter().map(|(k, v, _)| (k, v)).collect(),
                seed: *seed,
                pretrain: d.pretrain,
                recipe,
                hash,
            });
        }
    }
    for (i, p) in points.iter().enumerate() {
        if let Some(q) = points[..i].iter().find(|q| q.dir == p.dir) {
            return Err(Error::Recipe {
                layer: format!("sweep {}", spec.file.display()),
                key: "(points)".into(),
                message: format!(
                    "points {} and {} are the same run `{}`: a value repeats in [grid] or [zip]",
                    q.index,
                    p.index,
                    p.dir.display()
                ),
            });
        }
    }
    Ok(points)
}

/// Resolves one point's recipe; an error names the sweep file, where the offending
/// override came from, and the point.
fn resolve(
    spec: &SweepSpec,
    d: &Draft,
    overrides: &[(String, toml::Value, Origin)],
    sets: &[String],
    label: &str,
) -> Result<Recipe> {
    let src = RecipeSource {
        file: d.base.clone(),
        sweep_point: overrides
            .iter()
            .map(|(k, v, _)| format!("{k}={v}"))
            .collect(),
        env: true,
        sets: sets.to_vec(),
    };
    recipe::load(&src).map_err(|e| match e {
        Error::Recipe {
            layer,
            key,
            message,
        } => {
            let origin = layer
                .strip_prefix("sweep point override #")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| overrides.get(n.wrapping_sub(1)))
                .map(|(_, _, o)| format!("sweep {} {}", spec.file.display(), o.0));
            Error::Recipe {
                layer: format!("{} (point `{label}`)", origin.unwrap_or(layer)),
                key,
                message,
            }
        }
        other => other,
    })
}
