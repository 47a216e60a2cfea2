//! What may change between a run and its resumption. A resumed run must be the run
//! that would have happened, so a recipe that changes it (architecture, method,
//! data, batch size, seed, schedule, ...) is refused unless forced; keys that only
//! change how the run is watched or fed (logging and checkpoint frequency, loader
//! workers, the downstream `[eval]` section) are allowed.

use std::collections::BTreeMap;

/// Keys whose change leaves the trained weights as they would have been.
const HARMLESS: &[&str] = &[
    "name",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.workers",
    "data.cache",
];

fn flatten(v: &toml::Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &key, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The keys that differ between two resolved recipes, split into (changes the run,
/// harmless), each sorted. A recipe that does not parse counts as changing
/// everything (`<recipe>`).
pub fn recipe_changes(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let parse = |s: &str| s.parse::<toml::Table>().map(toml::Value::Table);
    let (Ok(a), Ok(b)) = (parse(old), parse(new)) else {
        return (vec!["<recipe>".into()], vec![]);
    };
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten(&a, "", &mut fa);
    flatten(&b, "", &mut fb);
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut unsafe_, mut harmless) = (Vec::new(), Vec::new());
    for k in keys {
        if fa.get(k) == fb.get(k) {
            continue;
        }
        if HARMLESS.contains(&k.as_str()) || k.starts_with("eval.") {
            harmless.push(k.clone());
        } else {
            unsafe_.push(k.clone());
        }
    }
    (unsafe_, harmless)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_changes() {
        let old = "name = \"a\"\n[train]\nlr = 0.1\nlog_every = 10\n[data]\nworkers = 2\n";
        let new = "name = \"a\"\n[train]\nlr = 0.2\nlog_every = 5\nseed = 1\n[data]\nworkers = 4\n[eval]\nk = [1]\n";
        let (u, h) = recipe_changes(old, new);
        assert_eq!(u, ["train.lr", "train.seed"]);
        assert_eq!(h, ["data.workers", "eval.k", "train.log_every"]);
        assert_eq!(recipe_changes(old, old), (vec![], vec![]));
    }
}
