//! Reading the lists that say which video files belong to which split and class:
//! UCF101's `classInd.txt` / `trainlist0N.txt` / `testlist0N.txt`, HMDB51's
//! per-class `<class>_test_split<N>.txt`, CSV `path,label` lists, and plain
//! folders. Everything is checked here, before training starts: a missing split
//! file, a class that `classInd.txt` does not list, a label out of range or a listed
//! file that does not exist is an [`Error::Dataset`] naming the file and line.
//! Videos themselves are not opened (they decode lazily in the loader).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One video of a split: its file and, for labelled datasets, its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub label: Option<u32>,
}

/// The videos of both splits and the class names (empty when unlabelled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub classes: Vec<String>,
    pub train: Vec<Entry>,
    pub test: Vec<Entry>,
}

/// File extensions treated as videos when scanning folders.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "avi", "mp4", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "ogv",
];

fn dataset_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn at_line(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    dataset_err(path, format!("line {line}: {message}"))
}

/// The file's non-blank lines, trimmed (UCF101's lists end lines with CRLF), with
/// their 1-based line numbers.
fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    if !path.is_file() {
        return Err(dataset_err(path, "split file not found"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

fn check_dir(path: &Path, key: &str) -> Result<()> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(dataset_err(path, format!("{key}: no such directory")))
    }
}

/// A listed video must exist (checked eagerly so a typo fails before training).
fn existing(list: &Path, line: usize, path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(at_line(
            list,
            line,
            format!("listed video {} does not exist", path.display()),
        ))
    }
}

/// UCF101: `splits/classInd.txt` (`1 ApplyEyeMakeup`, 1-based), `trainlist0N.txt`
/// (`ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`) and `testlist0N.txt` (no label:
/// the class comes from the folder name). Videos live at `root/<listed path>`.
pub fn ucf101(root: &Path, splits: &Path, split: u8) -> Result<Listing> {
    check_dir(root, "data.root")?;
    check_dir(splits, "data.splits")?;
    let ind = splits.join("classInd.txt");
    let mut classes = Vec::new();
    let mut by_name = BTreeMap::new();
    for (line, text) in read_lines(&ind)? {
        let mut parts = text.split_whitespace();
        let (Some(num), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(at_line(
                &ind,
                line,
                format!("expected `<index> <class>`, got `{text}`"),
            ));
        };
        let num: usize = num
            .parse()
            .map_err(|_| at_line(&ind, line, format!("`{num}` is not a class index")))?;
        if num != classes.len() + 1 {
            return Err(at_line(
                &ind,
                line,
                format!(
                    "class indices must run 1, 2, 3, ...; expected {}, got {num}",
                    classes.len() + 1
                ),
            ));
        }
        if by_name
            .insert(name.to_string(), classes.len() as u32)
            .is_some()
        {
            return Err(at_line(&ind, line, format!("class `{name}` listed twice")));
        }
        classes.push(name.to_string());
    }
    if classes.is_empty() {
        return Err(dataset_err(&ind, "lists no classes"));
    }
    let read_list = |name: String, labelled: bool| -> Result<Vec<Entry>> {
        let list = splits.join(name);
        let mut out = Vec::new();
        for (line, text) in read_lines(&list)? {
            let mut parts = text.split_whitespace();
            let rel = parts.next().unwrap_or_default();
            let given = parts.next();
            if parts.next().is_some() {
                return Err(at_line(
                    &list,
                    line,
                    format!("expected `<Class>/<video> [label]`, got `{text}`"),
                ));
            }
            let Some((class, _)) = rel.split_once('/') else {
                return Err(at_line(
                    &list,
                    line,
                    format!("`{rel}` has no class folder (`Class/video.avi`)"),
                ));
            };
            let Some(&label) = by_name.get(class) else {
                return Err(at_line(
                    &list,
                    line,
                    format!("class `{class}` is not in {}", ind.display()),
                ));
            };
            if let Some(g) = given {
                let n: usize = g
                    .parse()
                    .map_err(|_| at_line(&list, line, format!("label `{g}` is not a number")))?;
                if n != label as usize + 1 {
                    return Err(at_line(
                        &list,
                        line,
                        format!(
                            "label {n} disagrees with class `{class}` (index {} in classInd.txt)",
                            label + 1
                        ),
                    ));
                }
            } else if labelled {
                return Err(at_line(&list, line, "missing the 1-based label"));
            }
            let path = existing(&list, line, root.join(rel))?;
            out.push(Entry {
                path,
                label: Some(label),
            });
        }
        Ok(out)
    };
    Ok(Listing {
        train: read_list(format!("trainlist{split:02}.txt"), true)?,
        test: read_list(format!("testlist{split:02}.txt"), false)?,
        classes,
    })
}

/// HMDB51: one file per class, `splits/<class>_test_split<N>.txt`, lines
/// `video.avi 0|1|2` (1 train, 2 test, 0 unused). Classes are sorted by name and
/// numbered from 0; videos live at `root/<class>/<video>`.
pub fn hmdb51(root: &Path, splits: &Path, split: u8) -> Result<Listing> {
    check_dir(root, "data.root")?;
    check_dir(splits, "data.splits")?;
    let suffix = format!("_test_split{split}.txt");
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(splits)
        .map_err(|e| Error::io(splits, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let class = name.strip_suffix(&suffix)?.to_string();
            Some((class, e.path()))
        })
        .collect();
    if files.is_empty() {
        return Err(dataset_err(
            splits,
            format!("no split files `<class>{suffix}` for split {split}"),
        ));
    }
    files.sort();
    let mut listing = Listing::default();
    for (label, (class, list)) in files.into_iter().enumerate() {
        for (line, text) in read_lines(&list)? {
            let mut parts = text.split_whitespace();
            let (Some(video), Some(code), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(at_line(
                    &list,
                    line,
                    format!("expected `<video> 0|1|2`, got `{text}`"),
                ));
            };
            let target = match code {
                "0" => continue,
                "1" => &mut listing.train,
                "2" => &mut listing.test,
                other => {
                    return Err(at_line(
                        &list,
                        line,
                        format!(
                            "split code must be 0 (unused), 1 (train) or 2 (test), got `{other}`"
                        ),
                    ))
                }
            };
            let path = existing(&list, line, root.join(&class).join(video))?;
            target.push(Entry {
                path,
                label: Some(label as u32),
            });
        }
        listing.classes.push(class);
    }
    Ok(listing)
}

/// A CSV list of `path,label` lines (label optional; a first line `path,label` or
/// `path` is a header). Paths are relative to the list's folder unless absolute.
/// Labels are class indices when every label is a non-negative integer, else class
/// names (numbered in sorted order). `test` is an optional second list.
pub fn csv(train: &Path, test: Option<&Path>) -> Result<Listing> {
    type Row = (PathBuf, usize, PathBuf, Option<String>);
    let read = |list: &Path| -> Result<Vec<Row>> {
        let base = list.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        for (i, (line, text)) in read_lines(list)?.into_iter().enumerate() {
            let (p, label) = match text.split_once(',') {
                Some((p, l)) => (p.trim(), Some(l.trim())),
                None => (text.as_str(), None),
            };
            if i == 0 && p.eq_ignore_ascii_case("path") {
                continue;
            }
            if p.is_empty() {
                return Err(at_line(list, line, "empty path"));
            }
            if label.is_some_and(|l| l.contains(',')) {
                return Err(at_line(
                    list,
                    line,
                    format!("expected `path,label`, got `{text}`"),
                ));
            }
            let path = existing(list, line, base.join(p))?;
            let label = label.filter(|l| !l.is_empty()).map(str::to_string);
            rows.push((list.to_path_buf(), line, path, label));
        }
        Ok(rows)
    };
    let train_rows = read(train)?;
    let test_rows = match test {
        Some(t) => read(t)?,
        None => Vec::new(),
    };
    let all = || train_rows.iter().chain(&test_rows);
    let numeric = all().all(|r| r.3.as_ref().is_none_or(|l| l.parse::<u32>().is_ok()));
    let classes: Vec<String> = if numeric {
        let max = all()
            .filter_map(|r| r.3.as_ref()?.parse::<u32>().ok())
            .max();
        max.map_or(vec![], |m| (0..=m).map(|i| i.to_string()).collect())
    } else {
        let mut names: Vec<String> = all().filter_map(|r| r.3.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let to_entries = |rows: Vec<Row>| -> Vec<Entry> {
        rows.into_iter()
            .map(|(_, _, path, label)| Entry {
                path,
                // Numeric labels are the index itself ("03" is class 3); names were
                // collected into `classes` above, so the lookup always finds them.
                label: label.and_then(|l| match numeric {
                    true => l.parse::<u32>().ok(),
                    false => classes.iter().position(|c| *c == l).map(|i| i as u32),
                }),
            })
            .collect()
    };
    let (train, test) = (to_entries(train_rows), to_entries(test_rows));
    Ok(Listing {
        train,
        test,
        classes,
    })
}

/// Every video file under `root` (recursively, by extension, sorted by path), all in
/// the train split and unlabelled: pretraining on one's own footage.
pub fn folder(root: &Path) -> Result<Listing> {
    check_dir(root, "data.root")?;
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_video(&path) {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        return Err(dataset_err(
            root,
            format!(
                "no video files ({}) under data.root",
                VIDEO_EXTENSIONS.join(", ")
            ),
        ));
    }
    found.sort();
    Ok(Listing {
        classes: vec![],
        train: found
            .into_iter()
            .map(|path| Entry { path, label: None })
            .collect(),
        test: vec![],
    })
}

/// True when the file's extension is a known video extension.
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}
