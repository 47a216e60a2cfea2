//! Comparisons of runs: `vssl compare` reads run directories (or whole sweeps),
//! groups runs into rows (seeds of one sweep point by default), and writes a
//! markdown and a CSV table (mean ± std per metric), loss-curve and metric-bar
//! plots (PNG and SVG), and an `index.md` and a self-contained `index.html` tying
//! them together. `vssl runs` ([`listing`]) and `vssl plot` ([`curves`]) read the
//! same run directories.

pub mod curves;
pub mod html;
pub mod listing;
pub mod plot;
pub mod runs;
pub mod table;

use std::path::{Path, PathBuf};

pub use runs::{collect, GroupBy, RunData};

use crate::{Error, Result};

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Run directories and/or folders of runs (sweeps).
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    pub group_by: GroupBy,
    /// Metric columns (None: the headline metric of each protocol present).
    pub metrics: Option<Vec<String>>,
}

/// What `compare` wrote.
#[derive(Debug, Clone)]
pub struct CompareOutput {
    /// The markdown table (also in `table.md` and `index.md`).
    pub table: String,
    /// Every file written, `index.html` and `index.md` last.
    pub files: Vec<PathBuf>,
}

fn write(path: &Path, text: &str) -> Result<PathBuf> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    Ok(path.to_path_buf())
}

/// A path as written in `index.md`: relative to the output folder when inside it.
fn name_in(out: &Path, p: &Path) -> String {
    p.strip_prefix(out).unwrap_or(p).display().to_string()
}

/// Runs the comparison; tables are written before plots, so a missing font still
/// leaves the tables behind.
pub fn compare(opts: &CompareOptions) -> Result<CompareOutput> {
    let runs = collect(&opts.inputs)?;
    let metrics = match &opts.metrics {
        Some(m) => {
            let have = runs::available(&runs);
            if let Some(bad) = m.iter().find(|x| !have.contains(x)) {
                return Err(Error::BadInput(format!(
                    "--metrics: no run has `{bad}`; available: {}",
                    have.join(", ")
                )));
            }
            m.clone()
        }
        None => runs::default_metrics(&runs),
    };
    if metrics.is_empty() {
        return Err(Error::BadInput(format!(
            "no metrics to compare: none of the runs has eval results or a {}",
            crate::run_dir::METRICS_FILE
        )));
    }
    let groups = runs::group(&runs, &opts.group_by)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let md = table::markdown(&runs, &groups, &metrics);
    let mut files = vec![
        write(&opts.out.join("table.md"), &md)?,
        write(
            &opts.out.join("table.csv"),
            &table::csv(&runs, &groups, &metrics),
        )?,
    ];
    let loss = plot::loss_curves(&runs, &groups, &opts.out.join("loss"))?;
    let bars = plot::metric_bars(&runs, &groups, &metrics, &opts.out.join("metrics"))?;

    let mut index = String::from("# Comparison\n\n");
    index.push_str(&format!(
        "{} runs in {} rows (mean ± std over the runs of a row; std is the population std, \
         as `vssl eval --splits` reports).\n\n",
        runs.len(),
        groups.len()
    ));
    index.push_str(&md);
    index.push_str(&format!(
        "\nTables: [table.md](table.md), [table.csv](table.csv).\n\n## Downstream metrics\n\n\
         ![metrics]({0}) ([SVG]({1}))\n\n",
        name_in(&opts.out, &bars[0]),
        name_in(&opts.out, &bars[1])
    ));
    match &loss {
        Some(l) => index.push_str(&format!(
            "## Pretraining loss\n\n![loss]({0}) ([SVG]({1}))\n\n",
            name_in(&opts.out, &l[0]),
            name_in(&opts.out, &l[1])
        )),
        None => index.push_str(&format!(
            "## Pretraining loss\n\nNo run has a {}.\n\n",
            crate::run_dir::METRICS_FILE
        )),
    }
    index.push_str("## Runs\n\n| run | row | directory |\n| --- | --- | --- |\n");
    for g in &groups {
        for &i in &g.runs {
            index.push_str(&format!(
                "| {} | {} | {} |\n",
                runs[i].label,
                g.name,
                runs[i].dir.display()
            ));
        }
    }
    let page = html::page(&html::Page {
        runs: &runs,
        groups: &groups,
        table: &table::html(&runs, &groups, &metrics),
        metrics_svg: &bars[1],
        loss_svg: loss.as_ref().map(|l| l[1].as_path()),
        out: &opts.out,
    })?;
    files.extend(bars);
    files.extend(loss.into_iter().flatten());
    files.push(write(&opts.out.join("index.html"), &page)?);
    files.push(write(&opts.out.join("index.md"), &index)?);
    Ok(CompareOutput { table: md, files })
}
