//! The local sweep runner: each point runs as child processes of the `vssl` binary
//! (`vssl train` then `vssl eval`), so a crash in one run cannot take the sweep down
//! and `--jobs N` is N worker threads. Finished runs are skipped, stopped ones
//! resumed, failures recorded while the others carry on. Progress shows the points
//! done and each running point's step (read from its run-state file).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{Point, RunState, Sweep};
use crate::eval::Protocol;
use crate::run_dir::RunDir;
use crate::telemetry::{self, Phase, Progress};
use crate::{Error, Result};

/// How to run a sweep locally.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Runs at a time.
    pub jobs: usize,
    /// `--device` passed to every child.
    pub device: String,
    /// The `vssl` executable (normally `std::env::current_exe()`).
    pub exe: PathBuf,
}

/// What happened to one point.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Already finished before this invocation.
    Skipped,
    Done,
    /// `stage` is "train" or "eval"; `message` the child's last error line.
    Failed {
        stage: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub index: usize,
    pub label: String,
    pub dir: PathBuf,
    pub status: Status,
    pub seconds: f64,
}

/// Runs every unfinished point; returns one outcome per point, in point order.
pub fn run(sweep: &Sweep, opts: &LocalOptions) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(&sweep.dir).map_err(|e| Error::io(&sweep.dir, e))?;
    // One sweep process per sweep directory; each point's children lock their own.
    let _lock = crate::lock::RunLock::acquire(&sweep.dir, "vssl sweep")?;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; sweep.points.len()];
    let mut todo = VecDeque::new();
    for p in &sweep.points {
        match sweep.state(p) {
            RunState::Finished => {
                outcomes[p.index] = Some(Outcome {
                    index: p.index,
                    label: p.label.clone(),
                    dir: p.dir.clone(),
                    status: Status::Skipped,
                    seconds: 0.0,
                })
            }
            _ => {
                sweep.prepare(p)?;
                todo.push_back(p.index);
            }
        }
    }
    let skipped = sweep.points.len() - todo.len();
    let total = todo.len();
    let progress = Mutex::new(Progress::new(
        &format!("sweep {}", sweep.spec.name),
        "runs",
        total as u64,
        0,
    ));
    let say = |line: &str| {
        if let Ok(p) = progress.lock() {
            p.println(line)
        }
    };
    say(&format!(
        "sweep {}: {} points, {skipped} already finished, {total} to run, {} at a time",
        sweep.spec.name,
        sweep.points.len(),
        opts.jobs.max(1)
    ));
    let queue = Mutex::new(todo);
    let results = Mutex::new(Vec::new());
    let running = Mutex::new(Vec::<&Point>::new());
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    // The overall count plus each running point's own step, from its state file.
    let refresh = || {
        let msg = running
            .lock()
            .map(|r| running_points(&r))
            .unwrap_or_default();
        if let Ok(mut p) = progress.lock() {
            p.update(done.load(Ordering::Relaxed), &msg);
        }
    };
    // The queue's lock is released before the point runs.
    let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
    std::thread::scope(|s| {
        s.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(500));
                refresh();
            }
        });
        let workers: Vec<_> = (0..opts.jobs.max(1).min(total.max(1)))
            .map(|_| {
                s.spawn(|| {
                    while let Some(i) = next() {
                        let p = &sweep.points[i];
                        if let Ok(mut r) = running.lock() {
                            r.push(p);
                        }
                        let began = Instant::now();
                        let status = run_point(sweep, p, opts);
                        let secs = began.elapsed().as_secs_f64();
                        if let Ok(mut r) = running.lock() {
                            r.retain(|q| q.index != p.index);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        say(&match &status {
                            Status::Failed { stage, message } => format!(
                                "[{n}/{total}] {} FAILED in {stage} after {secs:.0}s: {message}",
                                p.label
                            ),
                            _ => format!("[{n}/{total}] {} done in {secs:.0}s", p.label),
                        });
                        if let Ok(mut r) = results.lock() {
                            r.push(Outcome {
                                index: i,
                                label: p.label.clone(),
                                dir: p.dir.clone(),
                                status,
                                seconds: secs,
                            });
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        finished.store(true, Ordering::Relaxed);
    });
    refresh(); // the last line: all done
    if let Ok(p) = progress.into_inner() {
        p.finish();
    }
    for o in results
        .into_inner()
        .map_err(|_| Error::Internal("a sweep worker panicked".into()))?
    {
        let i = o.index;
        outcomes[i] = Some(o);
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::Internal("a sweep point was not run".into())))
        .collect()
}

/// `running: a 120/300, b eval`: each running point's step from its state file
/// (`eval` once its training has finished).
fn running_points(points: &[&Point]) -> String {
    if points.is_empty() {
        return String::new();
    }
    let each: Vec<String> = points
        .iter()
        .map(|p| match telemetry::RunState::read(&RunDir::new(&p.dir)) {
            Ok(Some(s)) if s.state == Phase::Finished => format!("{} eval", p.label),
            Ok(Some(s)) => format!("{} {}/{}", p.label, s.step, s.total),
            _ => format!("{} starting", p.label),
        })
        .collect();
    format!("running: {}", each.join(", "))
}

/// Trains (or resumes) and evaluates one point; never panics on a child failure.
fn run_point(sweep: &Sweep, p: &Point, opts: &LocalOptions) -> Status {
    let state = sweep.state(p);
    let evals: Vec<Protocol> = match &state {
        RunState::Finished => return Status::Done,
        RunState::Evaluate(missing) => missing.clone(),
        RunState::Resume | RunState::Fresh => sweep.spec.eval.clone(),
    };
    if matches!(state, RunState::Resume | RunState::Fresh) {
        let recipe = RunDir::new(&p.dir).recipe();
        let mut args = vec![
            "train".to_string(),
            recipe.display().to_string(),
            "--out".into(),
            p.dir.display().to_string(),
        ];
        if state == RunState::Resume {
            args.push("--resume".into());
        }
        if let Err(message) = child(opts, &args, &RunDir::new(&p.dir).train_log()) {
            return Status::Failed {
                stage: "train",
                message,
            };
        }
    }
    if !evals.is_empty() {
        let list: Vec<&str> = evals.iter().map(|e| e.name()).collect();
        let mut args = vec![
            "eval".to_string(),
            p.dir.display().to_string(),
            "--protocol".into(),
            list.join(","),
        ];
        if !p.pretrain {
            args.push("--random-init".into());
        }
        if let Err(message) = child(opts, &args, &RunDir::new(&p.dir).eval_log()) {
            return Status::Failed {
                stage: "eval",
                message,
            };
        }
    }
    Status::Done
}

/// Runs `vssl --device D ARGS...` with stdout and stderr appended to `log`; on
/// failure returns the child's last `error:` line (or its exit status) and the log.
fn child(opts: &LocalOptions, args: &[String], log: &Path) -> std::result::Result<(), String> {
    let open = || -> std::io::Result<File> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        writeln!(f, "=== vssl --device {} {}", opts.device, args.join(" "))?;
        Ok(f)
    };
    let (out, err) = match open().and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(x) => x,
        Err(e) => return Err(format!("{}: {e}", log.display())),
    };
    let status = Command::new(&opts.exe)
        .arg("--device")
        .arg(&opts.device)
        .args(args)
        .env("NO_COLOR", "1") // plain log files
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .map(str::to_string)
                .unwrap_or_else(|| format!("exited with {s}"));
            Err(format!("{last} (log: {})", log.display()))
        }
        Err(e) => Err(format!("cannot start {}: {e}", opts.exe.display())),
    }
}

/// The end-of-sweep table: status, time, and each protocol's headline metric.
pub fn summary(outcomes: &[Outcome]) -> String {
    let runs: Vec<Option<crate::report::RunData>> = outcomes
        .iter()
        .map(|o| crate::report::RunData::load(&o.dir).ok())
        .collect();
    let loaded: Vec<crate::report::RunData> = runs.iter().flatten().cloned().collect();
    let metrics = crate::report::runs::default_metrics(&loaded);
    let mut out = format!(
        "| # | run | status | seconds | {} |\n| ---: | --- | --- | ---: |{}\n",
        metrics.join(" | "),
        " ---: |".repeat(metrics.len())
    );
    for (o, r) in outcomes.iter().zip(&runs) {
        let status = match &o.status {
            Status::Skipped => "finished before".to_string(),
            Status::Done => "done".to_string(),
            Status::Failed { stage, .. } => format!("FAILED ({stage})"),
        };
        let cells: Vec<String> = metrics
            .iter()
            .map(|m| {
                r.as_ref()
                    .and_then(|r| r.metrics.get(m))
                    .map_or("-".to_string(), |v| format!("{v:.3}"))
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {status} | {:.0} | {} |\n",
            o.index,
            o.label,
            o.seconds,
            cells.join(" | ")
        ));
    }
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Failed { .. }))
        .collect();
    for o in failed {
        if let Status::Failed { stage, message } = &o.status {
            out.push_str(&format!("\nFAILED {} ({stage}): {message}", o.label));
        }
    }
    out
}
