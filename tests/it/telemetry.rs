//! Telemetry end to end: TensorBoard events of real (tiny) runs against their
//! `metrics.jsonl` and eval results, no duplicate steps after a crash and resume,
//! `vssl runs` telling running, finished, failed and interrupted runs apart, plain
//! progress lines off a terminal, `vssl plot`, and `index.html` of `vssl compare`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use vssl::run_dir::RunDir;
use vssl::telemetry::event::What;
use vssl::telemetry::read_events;

use super::common::{require_crash_hook, run, stderr, stdout, tiny_recipe, train, vssl};

/// `vssl eval RUN --protocol P` on the CPU.
fn eval(run_dir: impl AsRef<std::ffi::OsStr>, protocols: &str) -> Output {
    let mut c = vssl(&["eval"]);
    c.arg(run_dir)
        .args(["--device", "cpu", "--protocol", protocols]);
    run(&mut c)
}

/// `vssl train` SIGKILLed (by the crash hook) halfway through its 2nd checkpoint.
fn killed_at_second_checkpoint(
    recipe: impl AsRef<std::ffi::OsStr>,
    out: impl AsRef<std::ffi::OsStr>,
) -> Output {
    let mut c = vssl(&["train"]);
    c.arg(recipe)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu"]);
    run(c.env("VSSL_CRASH_AT_WRITE", "2"))
}

/// Every scalar of a run's event files: tag -> step -> values (all of them, so a
/// duplicate shows).
fn scalars(run_dir: &Path) -> BTreeMap<String, BTreeMap<i64, Vec<f32>>> {
    let mut out: BTreeMap<String, BTreeMap<i64, Vec<f32>>> = BTreeMap::new();
    for (_, events) in read_events(&RunDir::new(run_dir)).unwrap() {
        for e in events {
            if let What::Scalar { tag, value } = e.what {
                out.entry(tag)
                    .or_default()
                    .entry(e.step)
                    .or_default()
                    .push(value);
            }
        }
    }
    out
}

fn texts(run_dir: &Path, tag: &str) -> Vec<String> {
    read_events(&RunDir::new(run_dir))
        .unwrap()
        .into_iter()
        .flat_map(|(_, e)| e)
        .filter_map(|e| match e.what {
            What::Text { tag: t, text } if t == tag => Some(text),
            _ => None,
        })
        .collect()
}

fn lines(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each value of each metrics line is the one scalar of its tag at its step.
fn assert_events_match_metrics(run_dir: &Path, lr_groups: &[&str]) {
    let got = scalars(run_dir);
    let logged = lines(run_dir);
    assert!(!logged.is_empty());
    for line in &logged {
        let step = line["step"].as_i64().unwrap();
        let mut want: Vec<(String, f64)> = Vec::new();
        for (k, v) in line.as_object().unwrap() {
            let tag = match k.as_str() {
                "step" | "lr" | "skipped_videos" => continue,
                "loss" => "train/loss".to_string(),
                "grad_norm" => "train/grad_norm".to_string(),
                "clips_per_s" => "perf/clips_per_s".to_string(),
                "data_wait" => "perf/data_wait".to_string(),
                other => format!("train/{other}"),
            };
            want.push((tag, v.as_f64().unwrap()));
        }
        for g in lr_groups {
            assert!(
                got[&format!("lr/{g}")].contains_key(&step),
                "lr/{g} at {step}"
            );
        }
        assert!(want.iter().any(|(t, _)| t == "perf/data_wait"));
        for (tag, v) in want {
            let at = got
                .get(&tag)
                .and_then(|s| s.get(&step))
                .unwrap_or_else(|| panic!("{}: {tag} missing at step {step}", run_dir.display()));
            assert_eq!(at, &vec![v as f32], "{tag} at step {step}");
        }
    }
    let steps: Vec<i64> = got["train/loss"].keys().copied().collect();
    let want: Vec<i64> = logged.iter().map(|l| l["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, want, "train/loss steps");
}

#[test]
fn events_match_metrics_after_a_crash_and_resume_and_hold_eval_results() {
    require_crash_hook();
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let out = d.path().join("run");
    // Killed during its 2nd checkpoint (step 6): steps 4-6 were logged after the
    // checkpoint of step 3 and are trained and logged again on resume.
    let o = killed_at_second_checkpoint(&r, &out);
    assert!(!o.status.success());
    assert_eq!(
        scalars(&out)["train/loss"].len(),
        6,
        "6 steps logged before the kill"
    );
    let o = train(&r, &out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        RunDir::new(&out).tb_event_files().len(),
        2,
        "one file per process"
    );
    assert_events_match_metrics(&out, &["model"]);
    let recipe = std::fs::read_to_string(out.join("recipe.resolved.toml")).unwrap();
    assert_eq!(
        texts(&out, "hparams/recipe"),
        vec![format!("```toml\n{recipe}\n```")]
    );

    // Eval metrics at the step of the weights, once even when evaluated twice.
    for _ in 0..2 {
        let o = eval(&out, "linear,knn");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let got = scalars(&out);
    let linear: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/linear.json")).unwrap())
            .unwrap();
    let top1 = linear["metrics"]["top1"].as_f64().unwrap() as f32;
    assert_eq!(got["eval/linear/top1"], BTreeMap::from([(6, vec![top1])]));
    assert!(got.contains_key("eval/knn/recall@1"), "{:?}", got.keys());
}

#[test]
fn finetuning_runs_log_their_loop_and_test_scores() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(
        d.path(),
        "[eval]\nfinetune_epochs = 2\nfinetune_batch_size = 8\ntest_every = 1\n",
    );
    let out = d.path().join("run");
    assert!(train(&r, &out, &[]).status.success());
    let o = eval(&out, "finetune");
    assert!(o.status.success(), "{}", stderr(&o));
    let sub = out.join("eval/finetune");
    assert_events_match_metrics(&sub, &["backbone", "head"]);
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/finetune.json")).unwrap())
            .unwrap();
    let history = res["metrics"]["history"].as_array().unwrap();
    let got = scalars(&sub);
    // 16 videos, batches of 8: epochs end at steps 2 and 4.
    let tests: Vec<(i64, f32)> = got["test/top1"].iter().map(|(s, v)| (*s, v[0])).collect();
    let want: Vec<(i64, f32)> = history
        .iter()
        .zip([2, 4])
        .map(|(h, s)| (s, h["top1"].as_f64().unwrap() as f32))
        .collect();
    assert_eq!(tests, want);
    assert_eq!(
        scalars(&out)["eval/finetune/best.top1"],
        BTreeMap::from([(
            6,
            vec![res["metrics"]["best"]["top1"].as_f64().unwrap() as f32]
        )])
    );
}

/// `vssl runs DIR --json`, by id.
fn runs_json(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let o = run(&mut vssl(&["runs", dir.to_str().unwrap(), "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    rows.into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect()
}

#[test]
fn runs_tells_running_finished_failed_and_interrupted_apart() {
    require_crash_hook();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("weights");
    let r = tiny_recipe(d.path(), "");
    let path = |id: &str| root.join(id);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let o = train(&r, &path("done"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Off a terminal, progress is plain lines: the first logged step and the last.
    let err = stderr(&o);
    assert!(err.contains(": 1/6 (17%) loss "), "{err}");
    assert!(
        err.contains(": 6/6 (100%) loss ") && err.contains("data-wait"),
        "{err}"
    );
    let o = eval(path("done"), "linear");
    assert!(o.status.success(), "{}", stderr(&o));

    assert!(train(&r, &path("stopped"), &["--stop-after", "3"])
        .status
        .success());
    let o = killed_at_second_checkpoint(&r, path("killed"));
    assert!(!o.status.success());
    // A learning rate this large overflows the loss within a few steps.
    let o = train(&r, &path("failed"), &["--set", "train.lr=1e30"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    let long = tiny_recipe_in(
        d.path(),
        "long",
        "[train]\nsteps = 100000\ncheckpoint_every = 0\n",
    );
    let mut child = vssl(&[
        "train",
        &s(&long),
        "--out",
        &s(&path("live")),
        "--device",
        "cpu",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let began = Instant::now();
    while !path("live").join("state.json").exists() {
        assert!(began.elapsed() < Duration::from_secs(120), "no state file");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = runs_json(&root);
    let state = |rows: &BTreeMap<String, serde_json::Value>, id: &str| {
        rows[id]["state"].as_str().unwrap().to_string()
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(state(&rows, "live"), "running");
    assert_eq!(rows["live"]["total"], 100000);
    assert_eq!(state(&rows, "done"), "finished");
    assert_eq!(
        (
            rows["done"]["step"].as_u64(),
            rows["done"]["total"].as_u64()
        ),
        (Some(6), Some(6))
    );
    let top1 = rows["done"]["metrics"]["linear.top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert_eq!(rows["done"]["method"], "geometric");
    assert_eq!(rows["done"]["arch"], "r3d_small");
    assert_eq!(rows["done"]["data"], "synthetic");
    assert_eq!(state(&rows, "stopped"), "interrupted");
    assert_eq!(rows["stopped"]["step"], 3);
    assert_eq!(state(&rows, "killed"), "interrupted");
    assert_eq!(state(&rows, "failed"), "failed");
    assert!(rows["failed"]["error"]
        .as_str()
        .unwrap()
        .contains("loss became"));
    // Killed with SIGKILL: its state file still says running, its process is gone.
    let rows = runs_json(&root);
    assert_eq!(state(&rows, "live"), "interrupted");

    // A fine-tuning sub-run whose process is alive (this test's own pid) makes a
    // finished pretraining run read as running, with the stage named.
    let sub = path("done").join("eval/finetune");
    std::fs::create_dir_all(&sub).unwrap();
    let live = serde_json::json!({
        "state": "running", "pid": std::process::id(), "host": vssl::telemetry::state::host(),
        "started": 0, "updated": vssl::telemetry::state::now(), "step": 30, "total": 60,
    });
    std::fs::write(sub.join("state.json"), live.to_string()).unwrap();
    let rows = runs_json(&root);
    assert_eq!(state(&rows, "done"), "running");
    assert_eq!(rows["done"]["stage"], "eval/finetune 30/60");
    std::fs::remove_dir_all(&sub).unwrap();

    let o = run(&mut vssl(&["runs", &s(&root)]));
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let done = table.lines().find(|l| l.starts_with("done ")).unwrap();
    assert!(done.contains("6/6") && done.contains("finished"), "{table}");
    assert!(done.contains(&format!("linear.top1={top1:.3}")), "{table}");
    assert!(table.starts_with("id "), "{table}");
    // A folder that does not exist is bad input.
    let o = run(&mut vssl(&["runs", &s(&d.path().join("nope"))]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// [`tiny_recipe`] in a sub-folder of its own (so two of them coexist).
fn tiny_recipe_in(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    tiny_recipe(&sub, extra)
}

#[test]
fn plot_overlays_runs_per_quantity_as_png_and_svg() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("run-a");
    let b = d.path().join("run-b");
    let r = tiny_recipe(d.path(), "");
    assert!(train(&r, &a, &[]).status.success());
    assert!(train(&r, &b, &["--set", "train.lr=0.02"]).status.success());
    let out = d.path().join("plots");
    let o = run(&mut vssl(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    for q in ["loss", "acc", "lr", "clips_per_s", "data_wait"] {
        let png = std::fs::read(out.join(format!("{q}.png"))).unwrap();
        assert_eq!(&png[..4], b"\x89PNG", "{q}.png");
        let svg = std::fs::read_to_string(out.join(format!("{q}.svg"))).unwrap();
        assert!(
            svg.contains("run-a") && svg.contains("run-b"),
            "{q}.svg legend"
        );
    }
    let o = run(&mut vssl(&[
        "plot",
        d.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a run directory"), "{}", stderr(&o));
}

#[test]
fn compare_writes_a_self_contained_index_html() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path(), "");
    let runs = d.path().join("runs");
    for (name, lr) in [("x", "0.05"), ("y", "0.02")] {
        let out = runs.join(name);
        assert!(train(&r, &out, &["--set", &format!("train.lr={lr}")])
            .status
            .success());
        let o = eval(&out, "knn");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let out = d.path().join("report");
    let o = run(&mut vssl(&[
        "compare",
        runs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--group-by",
        "run",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        html.contains("<th>knn.recall@1</th>") && html.contains("<td>x</td>"),
        "table"
    );
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "metric panels and loss curves inline"
    );
    // Nothing to fetch: no scripts, no external images or styles, no URLs but the
    // SVG namespace.
    for banned in ["<script", "<img", "src=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned}");
    }
    let urls = html.matches("http://").count() + html.matches("https://").count();
    assert_eq!(
        urls,
        html.matches("http://www.w3.org/2000/svg").count(),
        "only the SVG namespace"
    );
    // The recipe links resolve from the page's folder.
    let links: Vec<&str> = html
        .split("<a href=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(links.len(), 2);
    for l in links {
        assert!(out.join(l).is_file(), "{l}");
    }
}
