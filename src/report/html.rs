//! The comparison as one self-contained web page (`index.html`): the table, the
//! metric panels and the loss curves (the SVG plots inlined), and the list of runs
//! with links to their resolved recipes. No scripts, no styles or fonts from
//! elsewhere, no images by URL: the page makes no network request and opens from
//! disk, from an artifact store or from a mail attachment the same way.

use std::path::{Component, Path, PathBuf};

use super::runs::{Group, RunData};
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Percent-encodes a relative path for an `href` (keeps `/`).
fn href(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `to` relative to the folder `from` (both made absolute first).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (from, to) = (abs(from), abs(to));
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// An SVG file's markup for inlining (any XML prologue dropped).
fn inline_svg(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let start = text
        .find("<svg")
        .ok_or_else(|| Error::Internal(format!("{}: no <svg> element", path.display())))?;
    Ok(text[start..].to_string())
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1100px;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}\
svg{max-width:100%;height:auto;display:block;margin:1em 0}code{font-size:90%}\
table.runs td,table.runs th{text-align:left}";

/// What the page shows.
pub struct Page<'a> {
    pub runs: &'a [RunData],
    pub groups: &'a [Group],
    /// The table as HTML (from [`super::table::html`]).
    pub table: &'a str,
    /// The metric panels' SVG.
    pub metrics_svg: &'a Path,
    /// The loss curves' SVG, if any run logged a loss.
    pub loss_svg: Option<&'a Path>,
    /// Where `index.html` goes (links are relative to it).
    pub out: &'a Path,
}

/// The page's HTML.
pub fn page(p: &Page) -> Result<String> {
    let mut h =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // An empty inline icon: otherwise the browser asks for /favicon.ico.
    h.push_str("<link rel=\"icon\" href=\"data:,\">\n<title>vssl comparison</title>\n");
    h.push_str(&format!(
        "<style>{STYLE}</style>\n</head>\n<body>\n<h1>Comparison</h1>\n"
    ));
    h.push_str(&format!(
        "<p>{} runs in {} rows (mean ± std over the runs of a row; std is the population \
         std, as <code>vssl eval --splits</code> reports).</p>\n",
        p.runs.len(),
        p.groups.len()
    ));
    h.push_str(p.table);
    h.push_str("<h2>Downstream metrics</h2>\n");
    h.push_str(&inline_svg(p.metrics_svg)?);
    h.push_str("\n<h2>Pretraining loss</h2>\n");
    match p.loss_svg {
        Some(svg) => h.push_str(&inline_svg(svg)?),
        None => h.push_str(&format!(
            "<p>No run has a {}.</p>",
            crate::run_dir::METRICS_FILE
        )),
    }
    h.push_str("\n<h2>Runs</h2>\n<table class=\"runs\">\n<tr><th>run</th><th>row</th><th>directory</th><th>recipe</th></tr>\n");
    for g in p.groups {
        for &i in &g.runs {
            let r = &p.runs[i];
            let recipe = relative(p.out, &RunDir::new(&r.dir).recipe());
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><a href=\"{}\">{}</a></td></tr>\n",
                esc(&r.label),
                esc(&g.name),
                esc(&r.dir.display().to_string()),
                href(&recipe),
                crate::run_dir::RECIPE_FILE
            ));
        }
    }
    h.push_str("</table>\n</body>\n</html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_and_encoded() {
        assert_eq!(
            relative(Path::new("/a/b/out"), Path::new("/a/runs/x y/r.toml")),
            PathBuf::from("../../runs/x y/r.toml")
        );
        assert_eq!(
            href(Path::new("../runs/x y/r.toml")),
            "../runs/x%20y/r.toml"
        );
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
