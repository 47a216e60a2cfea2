//! The layer table in `src/lib.rs` is the law of imports: a module may use only
//! modules of strictly lower layers. This test reads every `crate::` (and
//! crate-root-reaching `super::`) path under `src/` and fails, naming the file and
//! the edge, when one breaks the table or the module graph has a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `module -> layer` from the `//! | N | `a`, `b` | ... |` rows of `lib.rs`.
fn layer_table(lib_rs: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(row) = line.trim_start().strip_prefix("//! |") else {
            continue;
        };
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cols[0].parse::<usize>() else {
            continue;
        };
        for name in cols.get(1).unwrap_or(&"").split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert(name.to_string(), layer);
            }
        }
    }
    out
}

/// Source text with `//` comments and string literals blanked (paths in docs or
/// messages are not imports).
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            // A char literal like '"' must not open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\"'") || rest.starts_with("\\\"'") {
                    let n = if rest.starts_with("\"'") { 2 } else { 3 };
                    for _ in 0..n {
                        chars.next();
                    }
                    out.push_str("' '");
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// First segments of every path in a `{a, b::c, d::{e, f}}` group (text after `{`).
fn group_heads(s: &str) -> Vec<String> {
    let (mut depth, mut item_start, mut heads) = (0usize, true, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && (c.is_ascii_alphabetic() || c == '_') && depth == 0 => {
                heads.push(ident(&s[i..]).to_string());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Crate-root modules a file names: `crate::x`, `crate::{x, y}`, and `super::`
/// chains that climb to the crate root from a file `depth` modules deep.
fn used_modules(code: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let boundary = |i: usize| {
        i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':')
    };
    let mut add = |rest: &str| {
        if let Some(g) = rest.strip_prefix('{') {
            out.extend(group_heads(g));
        } else {
            let id = ident(rest);
            if !id.is_empty() {
                out.insert(id.to_string());
            }
        }
    };
    for (i, _) in code.match_indices("crate::") {
        if boundary(i) {
            add(&code[i + "crate::".len()..]);
        }
    }
    let mut i = 0;
    while let Some(j) = code[i..].find("super::") {
        let at = i + j;
        if boundary(at) {
            let mut rest = &code[at..];
            let mut ups = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                ups += 1;
                rest = r;
            }
            if ups >= depth {
                add(rest);
            }
            i = at + ups * "super::".len();
        } else {
            i = at + 1;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every breach of the table under `src` (empty when the tree is clean).
fn check(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let table = layer_table(&lib);
    let mut problems = Vec::new();
    if table.is_empty() {
        return vec!["src/lib.rs has no layer table (`//! | N | `module` | ... |` rows)".into()];
    }
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let top = parts[0].trim_end_matches(".rs").to_string();
        // The binary (main.rs, cli/) reaches the library as `vssl::`; lib.rs only declares.
        if matches!(top.as_str(), "main" | "lib" | "cli" | "bin") {
            continue;
        }
        seen.insert(top.clone());
        let Some(&mine) = table.get(&top) else {
            problems.push(format!(
                "src/{}: module `{top}` is not in the layer table of src/lib.rs",
                rel.display()
            ));
            continue;
        };
        // Module depth: src/x.rs and src/x/mod.rs are 1 deep, src/x/y.rs 2, ...
        let last = parts.last().unwrap();
        let depth = parts.len() - usize::from(last == "mod.rs");
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        for used in used_modules(&code, depth) {
            if used == top || used == "Error" || used == "Result" {
                continue;
            }
            match table.get(&used) {
                None if used.chars().next().is_some_and(|c| c.is_ascii_uppercase()) => {}
                None => problems.push(format!(
                    "src/{}: uses crate::{used}, which is not in the layer table of src/lib.rs",
                    rel.display()
                )),
                Some(&theirs) => {
                    graph.entry(top.clone()).or_default().insert(used.clone());
                    if theirs >= mine {
                        problems.push(format!(
                            "src/{}: `{top}` (layer {mine}) imports `{used}` (layer {theirs}): \
                             a module may import only from lower layers",
                            rel.display()
                        ));
                    }
                }
            }
        }
    }
    for m in table.keys() {
        if !seen.contains(m) {
            problems.push(format!(
                "src/lib.rs: the layer table lists `{m}`, which has no file under src/"
            ));
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("module cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// One cycle of the module graph, as `a -> b -> a`, if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut c = stack[pos..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn src_follows_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = check(&src);
    assert!(
        problems.is_empty(),
        "import layering broken ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The checker itself: a tree with a back-edge, a `super::` climb and a cycle fails
/// with messages naming the file and the edge; comments and strings are ignored.
#[test]
fn checker_reports_back_edges_and_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let w = |p: &str, s: &str| {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w(
        "lib.rs",
        "//! | layer | modules |\n//! | --- | --- |\n//! | 0 | `low` |\n//! | 1 | `high`, `side` |\n",
    );
    w(
        "low.rs",
        "// crate::high in a comment\nconst S: &str = \"crate::high\";\n",
    );
    w("high/mod.rs", "use crate::{low, side::X};\n");
    w("side.rs", "pub struct X;\n");
    let clean = check(src);
    assert_eq!(
        clean,
        vec!["src/high/mod.rs: `high` (layer 1) imports `side` (layer 1): a module may import only from lower layers"]
    );
    w("side.rs", "pub struct X;\n");
    w("high/mod.rs", "use crate::low;\n");
    assert!(check(src).is_empty(), "{:?}", check(src));
    w("low/inner.rs", "fn f() { super::super::high::g(); }\n");
    w("low.rs", "mod inner;\n");
    std::fs::remove_file(src.join("low.rs")).unwrap();
    w("low/mod.rs", "mod inner;\n");
    let p = check(src);
    assert!(
        p.contains(&"src/low/inner.rs: `low` (layer 0) imports `high` (layer 1): a module may import only from lower layers".to_string()),
        "{p:?}"
    );
    assert!(
        p.iter().any(|m| m == "module cycle: high -> low -> high"),
        "{p:?}"
    );
}
