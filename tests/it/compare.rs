//! `vssl compare` on fabricated run directories: grouping, mean ± std, metric
//! selection, random-init runs in the same columns, and the plot files.

use std::path::{Path, PathBuf};

use super::common::{run, stderr, stdout, vssl};

/// A fake run directory: recipe, point.toml (when `group` is given), eval results
/// and a loss log.
fn fake_run(
    root: &Path,
    name: &str,
    group: Option<(&str, usize, bool)>,
    kind: &str,
    top1: f64,
    recall1: f64,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("eval")).unwrap();
    std::fs::write(
        dir.join("recipe.resolved.toml"),
        format!("name = \"{name}\"\n[method]\nkind = \"{kind}\"\n[train]\nseed = 0\n"),
    )
    .unwrap();
    let pretrain = group.is_none_or(|g| g.2);
    if let Some((g, index, pretrain)) = group {
        std::fs::write(
            dir.join("point.toml"),
            format!(
                "sweep = \"s\"\nindex = {index}\nlabel = \"{name}\"\ngroup = \"{g}\"\nbase = \"x.toml\"\n\
                 pretrain = {pretrain}\neval = [\"linear\", \"knn\"]\nhash = \"00000000\"\n[overrides]\n"
            ),
        )
        .unwrap();
    }
    let suffix = if pretrain { "" } else { "-random" };
    std::fs::write(
        dir.join(format!("eval/linear{suffix}.json")),
        format!(
            "{{\"protocol\": \"linear\", \"metrics\": {{\"top1\": {top1}, \"top5\": 1.0, \"confusion\": [[1, 2], [3, 4]]}}}}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("eval/knn{suffix}.json")),
        format!("{{\"protocol\": \"knn\", \"metrics\": {{\"recall@1\": {recall1}, \"recall@5\": 0.9}}}}"),
    )
    .unwrap();
    if pretrain {
        std::fs::write(dir.join("model.safetensors"), b"not read").unwrap();
        let lines: String = (1..=20)
            .map(|s| {
                format!(
                    "{{\"step\": {}, \"loss\": {}, \"lr\": 0.1}}\n",
                    s * 10,
                    2.0 / s as f64 + top1
                )
            })
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    }
    dir
}

/// A sweep folder: group `a` (2 seeds), group `b` (3 seeds), random init (1 run).
fn fake_sweep(root: &Path) -> PathBuf {
    let s = root.join("sweep");
    fake_run(&s, "a,seed=0", Some(("a", 0, true)), "geometric", 0.4, 0.30);
    fake_run(
        &s,
        "b,seed=0",
        Some(("b", 1, true)),
        "speed_sort",
        0.2,
        0.10,
    );
    fake_run(
        &s,
        "scratch,seed=0",
        Some(("scratch", 2, false)),
        "geometric",
        0.125,
        0.05,
    );
    fake_run(&s, "a,seed=1", Some(("a", 3, true)), "geometric", 0.6, 0.50);
    fake_run(
        &s,
        "b,seed=1",
        Some(("b", 4, true)),
        "speed_sort",
        0.3,
        0.20,
    );
    fake_run(
        &s,
        "b,seed=2",
        Some(("b", 6, true)),
        "speed_sort",
        0.4,
        0.30,
    );
    s
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn close(a: &str, b: f64) -> bool {
    (a.parse::<f64>().unwrap() - b).abs() < 1e-9
}

#[test]
fn compare_groups_seeds_into_mean_and_std_with_plots() {
    let d = tempfile::tempdir().unwrap();
    let s = fake_sweep(d.path());
    let out = d.path().join("report");
    let o = run(&mut vssl(&[
        "compare",
        s.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert_eq!(stdout(&o), md);
    // Rows in sweep order; population std: a = {0.4, 0.6}, b = {0.2, 0.3, 0.4}.
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "| run | runs | linear.top1 | knn.recall@1 |");
    assert_eq!(lines[2], "| a | 2 | 0.500 ± 0.100 | 0.400 ± 0.100 |");
    assert_eq!(lines[3], "| b | 3 | 0.300 ± 0.082 | 0.200 ± 0.082 |");
    // The random-init run's `-random` results land in the same columns.
    assert_eq!(lines[4], "| scratch | 1 | 0.125 | 0.050 |");
    let rows = csv_rows(&out.join("table.csv"));
    assert_eq!(
        rows[0],
        [
            "group",
            "runs",
            "linear.top1_mean",
            "linear.top1_std",
            "linear.top1_n",
            "knn.recall@1_mean",
            "knn.recall@1_std",
            "knn.recall@1_n"
        ]
    );
    assert_eq!(rows[2][0], "b");
    assert!(close(&rows[2][2], 0.3) && close(&rows[2][3], (0.02f64 / 3.0).sqrt()));
    assert_eq!(rows[2][4], "3");
    for f in ["metrics.png", "metrics.svg", "loss.png", "loss.svg"] {
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        assert!(len > 5_000, "{f} is only {len} bytes");
    }
    // A PNG of the expected size (IHDR width/height), with the group names in the SVG.
    let png = std::fs::read(out.join("metrics.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(
        h >= 2 * (90 + 34 * 3),
        "two panels of three bars: height {h}"
    );
    let svg = std::fs::read_to_string(out.join("metrics.svg")).unwrap();
    assert!(svg.contains("scratch") && svg.contains("linear.top1"));
    let loss_svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    // Mean lines (2 px) with their ±std bands.
    assert!(loss_svg.contains("stroke-width=\"2\"") && loss_svg.contains("<polygon"));
    let index = std::fs::read_to_string(out.join("index.md")).unwrap();
    for needle in [
        "table.csv",
        "metrics.png",
        "metrics.svg",
        "loss.png",
        "| a | 2 |",
    ] {
        assert!(index.contains(needle), "{needle} not in index.md");
    }
}

#[test]
fn compare_group_by_keys_and_metric_selection() {
    let d = tempfile::tempdir().unwrap();
    let s = fake_sweep(d.path());
    let out = d.path().join("by_kind");
    let o = run(&mut vssl(&[
        "compare",
        s.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--group-by",
        "method.kind",
        "--metrics",
        "knn.recall@5,linear.top5,pretrain.final_loss",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0],
        "| run | runs | knn.recall@5 | linear.top5 | pretrain.final_loss |"
    );
    // geometric: a (2 runs) and scratch; scratch has no loss log.
    assert!(
        lines[2].starts_with("| method.kind=geometric | 3 | 0.900 ± 0.000 |"),
        "{md}"
    );
    assert!(lines[2].ends_with("(n=2) |"), "{md}");
    assert!(
        lines[3].starts_with("| method.kind=speed_sort | 3 |"),
        "{md}"
    );
    // Final loss = 2/20 + top1: speed_sort {0.3, 0.4, 0.5}.
    assert!(lines[3].ends_with("| 0.400 ± 0.082 |"), "{md}");

    // Single run directories, one row each; an unknown metric is a clear error.
    let a = s.join("a,seed=0");
    let o = run(&mut vssl(&[
        "compare",
        a.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--metrics",
        "linear.top9",
    ]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("linear.top9") && stderr(&o).contains("linear.top1"));
    let o = run(&mut vssl(&[
        "compare",
        d.path().join("nothing").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
