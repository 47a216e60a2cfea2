//! Progress of a long job (a training run, a sweep) on stderr: an indicatif bar
//! when stderr is a terminal, and otherwise (CI, Slurm and sweep logs, where a bar
//! is either invisible or a wall of carriage returns) a plain line at the first
//! update, then at most every [`PLAIN_EVERY`], and at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a non-terminal gets a progress line.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// A bar, or plain lines.
pub struct Progress {
    label: String,
    total: u64,
    /// Position when this process started (ETA counts only its own speed).
    first: u64,
    began: Instant,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    /// The line of the last position was printed; nothing follows it.
    ended: bool,
}

/// `1h02m`, `3m05s`, `42s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round().max(0.0) as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

impl Progress {
    /// Progress of `label`, `pos` of `total` done already. `unit` names what is
    /// counted (`steps`, `runs`).
    pub fn new(label: &str, unit: &str, total: u64, pos: u64) -> Self {
        Self::with_terminal(label, unit, total, pos, std::io::stderr().is_terminal())
    }

    fn with_terminal(label: &str, unit: &str, total: u64, pos: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(total);
            let template = format!(
                "{{spinner}} {label} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} eta {{eta}} {{msg}}"
            );
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(pos);
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Self {
            label: label.into(),
            total,
            first: pos,
            began: Instant::now(),
            bar,
            last_line: None,
            ended: false,
        }
    }

    /// Seconds left at this process's pace so far.
    pub fn eta(&self, pos: u64) -> f64 {
        let done = pos.saturating_sub(self.first);
        if done == 0 {
            return f64::NAN;
        }
        self.began.elapsed().as_secs_f64() / done as f64 * self.total.saturating_sub(pos) as f64
    }

    /// Moves to `pos` with the status `msg`; returns the plain line printed, if one was.
    pub fn update(&mut self, pos: u64, msg: &str) -> Option<String> {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg.to_string());
            return None;
        }
        if self.ended {
            return None;
        }
        let due = self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
        self.ended = pos >= self.total;
        if !(due || self.ended) {
            return None;
        }
        self.last_line = Some(Instant::now());
        let pct = 100.0 * pos as f64 / self.total.max(1) as f64;
        let sep = if msg.is_empty() { "" } else { " " };
        let line = format!(
            "{}: {pos}/{} ({pct:.0}%){sep}{msg} eta {}",
            self.label,
            self.total,
            duration(self.eta(pos))
        );
        eprintln!("{line}");
        Some(line)
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_at_the_first_update_and_the_end_only() {
        let mut p = Progress::with_terminal("train x", "steps", 10, 0, false);
        let first = p.update(1, "loss 1.0").unwrap();
        assert!(
            first.starts_with("train x: 1/10 (10%) loss 1.0 eta "),
            "{first}"
        );
        assert_eq!(p.update(5, "loss 0.5"), None);
        assert!(p.update(10, "loss 0.1").unwrap().contains("10/10 (100%)"));
        assert_eq!(p.update(10, "again"), None, "the end is printed once");
        let mut idle = Progress::with_terminal("sweep s", "runs", 2, 0, false);
        assert_eq!(idle.update(0, "").unwrap(), "sweep s: 0/2 (0%) eta ?");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(f64::NAN), "?");
    }
}
