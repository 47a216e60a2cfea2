//! Comparison tables: markdown (`mean ± std`, for notes and the README) and CSV
//! (mean, std and count in separate columns, for spreadsheets and scripts), and the
//! same rows as HTML for `index.html`.

use super::runs::{stat, Group, RunData};

/// Runs of a group with at least one of the metrics (a sweep still running has
/// directories without results yet).
pub fn reporting(runs: &[RunData], g: &Group, metrics: &[String]) -> usize {
    g.runs
        .iter()
        .filter(|&&i| metrics.iter().any(|m| runs[i].metrics.contains_key(m)))
        .count()
}

/// `0.418 ± 0.061`, with `(n=2)` when fewer of the row's runs report this metric.
fn cell(runs: &[RunData], g: &Group, metric: &str, n: usize) -> String {
    match stat(runs, g, metric) {
        None => "-".into(),
        Some(s) if s.values.len() == 1 && n == 1 => format!("{:.3}", s.mean),
        Some(s) => {
            let mut c = format!("{:.3} ± {:.3}", s.mean, s.std);
            if s.values.len() != n {
                c.push_str(&format!(" (n={})", s.values.len()));
            }
            c
        }
    }
}

/// A markdown table: one row per group, `runs` (how many of its runs have results,
/// e.g. seeds) and one column per metric.
pub fn markdown(runs: &[RunData], groups: &[Group], metrics: &[String]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = format!("| run | runs | {} |\n", metrics.join(" | "));
    out.push_str(&format!(
        "| --- | ---: |{}\n",
        " ---: |".repeat(metrics.len())
    ));
    for g in groups {
        let n = reporting(runs, g, metrics);
        let cells: Vec<String> = metrics.iter().map(|m| cell(runs, g, m, n)).collect();
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            esc(&g.name),
            n,
            cells.join(" | ")
        ));
    }
    out
}

/// The table as HTML: the same rows and cells as [`markdown`].
pub fn html(runs: &[RunData], groups: &[Group], metrics: &[String]) -> String {
    let esc = super::html::esc;
    let mut out = String::from("<table>\n<tr><th>run</th><th>runs</th>");
    for m in metrics {
        out.push_str(&format!("<th>{}</th>", esc(m)));
    }
    out.push_str("</tr>\n");
    for g in groups {
        let n = reporting(runs, g, metrics);
        out.push_str(&format!("<tr><td>{}</td><td>{n}</td>", esc(&g.name)));
        for m in metrics {
            out.push_str(&format!("<td>{}</td>", esc(&cell(runs, g, m, n))));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A CSV table: `group,runs,<metric>_mean,<metric>_std,<metric>_n,...`; empty cells
/// where no run of the group has the metric.
pub fn csv(runs: &[RunData], groups: &[Group], metrics: &[String]) -> String {
    let mut head = vec!["group".to_string(), "runs".to_string()];
    for m in metrics {
        head.extend([format!("{m}_mean"), format!("{m}_std"), format!("{m}_n")]);
    }
    let mut out = head
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for g in groups {
        let mut row = vec![csv_field(&g.name), reporting(runs, g, metrics).to_string()];
        for m in metrics {
            match stat(runs, g, m) {
                Some(s) => row.extend([
                    format!("{}", s.mean),
                    format!("{}", s.std),
                    s.values.len().to_string(),
                ]),
                None => row.extend([String::new(), String::new(), "0".into()]),
            }
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}
