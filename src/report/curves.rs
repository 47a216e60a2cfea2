//! `vssl plot`: the training curves of one or more runs from their `metrics.jsonl`,
//! one PNG and SVG per quantity (the total loss, each loss term or logged scalar
//! of the method, the learning rate, clips/s, the data-wait share, the gradient
//! norm), every run a line of its own colour with a legend.

use std::path::{Path, PathBuf};

use super::plot::{line_plot, Curve};
use super::runs::{series, RunData, Series};
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// Keys with a title and an axis name of their own; any other key is a loss term
/// or scalar of the method, plotted between the loss and these.
const KNOWN: [(&str, &str, &str); 5] = [
    ("loss", "Training loss (total)", "loss"),
    ("lr", "Learning rate (schedule)", "lr"),
    ("clips_per_s", "Throughput", "clips/s"),
    ("data_wait", "Share of time waiting for data", "data wait"),
    ("grad_norm", "Gradient norm (before clipping)", "norm"),
];

/// Written as counts, not curves.
const SKIPPED: [&str; 1] = ["skipped_videos"];

/// A file-name-safe form of a key (`recall@1` -> `recall_1`).
fn file_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Plots the runs into `out`; returns the files written (PNG then SVG of each
/// quantity, in the order above).
pub fn plot_runs(dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut runs: Vec<(String, Series)> = Vec::new();
    for d in dirs {
        let run = RunDir::new(d);
        if !RunDir::is_run(d) {
            return Err(Error::BadInput(format!(
                "{}: not a run directory (no {})",
                d.display(),
                crate::run_dir::RECIPE_FILE
            )));
        }
        let s = series(&run);
        if s.is_empty() {
            return Err(Error::BadInput(format!(
                "{}: no logged steps to plot",
                run.metrics().display()
            )));
        }
        runs.push((RunData::load(d)?.label, s));
    }
    // Two runs of one label (e.g. `quick` in two folders) are told apart by path.
    for i in 0..runs.len() {
        if runs.iter().filter(|r| r.0 == runs[i].0).count() > 1 {
            runs[i].0 = dirs[i].display().to_string();
        }
    }
    let mut keys: Vec<String> = runs.iter().flat_map(|r| r.1.keys().cloned()).collect();
    keys.sort();
    keys.dedup();
    let known = |k: &str| KNOWN.iter().position(|x| x.0 == k);
    let mut order: Vec<(usize, String)> = keys
        .into_iter()
        .filter(|k| !SKIPPED.contains(&k.as_str()))
        .map(|k| (known(&k).map_or(1, |i| if i == 0 { 0 } else { i + 1 }), k))
        .collect();
    order.sort();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = Vec::new();
    for (_, key) in order {
        let curves: Vec<Curve> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, (name, s))| {
                let points = s
                    .get(&key)?
                    .iter()
                    .map(|&(x, y)| (x as f64, y, 0.0))
                    .collect();
                Some(Curve {
                    color: i,
                    name: name.clone(),
                    points,
                })
            })
            .collect();
        let title = match known(&key) {
            Some(i) => KNOWN[i].1.to_string(),
            None => format!("Loss term or method scalar: {key}"),
        };
        let y = known(&key).map_or(key.as_str(), |i| KNOWN[i].2);
        files.extend(line_plot(&out.join(file_name(&key)), &title, y, &curves)?);
    }
    Ok(files)
}
