//! Progress of the long jobs (`seed`, `reconcile`, `sweep`, `backup`, `restore`, `copy`, `warm`): a
//! bar on a terminal, plain lines in a log (stderr not a terminal): one line per tenth of
//! the work when its size is known, at most one a second otherwise, and one at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// One job's progress on stderr.
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    /// Plain lines: the tenth last reported, and when the last line was written.
    tenth: u64,
    last_line: Instant,
}

impl Progress {
    /// Starts reporting `what` (a plural noun: "variants", "keys") of which there are
    /// `total`, if known.
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        Progress::with_terminal(what, total, std::io::stderr().is_terminal())
    }

    /// As [`Progress::new`], saying whether stderr is a terminal.
    pub fn with_terminal(what: &'static str, total: Option<u64>, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "commerce: {bar:30} {pos}/{len} {msg} ({per_sec}, {eta} left)",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("commerce: {spinner} {pos} {msg} ({per_sec})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            total,
            bar,
            tenth: 0,
            last_line: Instant::now(),
        }
    }

    /// `done` of the work is done.
    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if let Some(line) = self.line(done) {
            eprintln!("{line}");
        }
    }

    /// The plain line to write for `done`, if one is due.
    fn line(&mut self, done: u64) -> Option<String> {
        match self.total {
            Some(total) if total > 0 => {
                let tenth = (done.min(total) * 10) / total;
                if tenth <= self.tenth {
                    return None;
                }
                self.tenth = tenth;
                Some(format!(
                    "commerce: {done}/{total} {} ({}%)",
                    self.what,
                    tenth * 10
                ))
            }
            _ => {
                if self.last_line.elapsed() < Duration::from_secs(1) {
                    return None;
                }
                self.last_line = Instant::now();
                Some(format!("commerce: {done} {}", self.what))
            }
        }
    }

    /// The job ended: clears the bar (the caller then prints its summary line).
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
    fn a_log_gets_one_line_per_tenth_of_known_work() {
        let mut progress = Progress::with_terminal("variants", Some(1000), false);
        let lines: Vec<String> = (1..=1000).filter_map(|n| progress.line(n)).collect();
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert_eq!(lines[0], "commerce: 100/1000 variants (10%)");
        assert_eq!(lines[9], "commerce: 1000/1000 variants (100%)");
        assert!(lines.iter().all(|l| !l.contains('\r')));
    }

    #[test]
    fn a_log_gets_at_most_a_line_a_second_of_unknown_work() {
        let mut progress = Progress::with_terminal("keys", None, false);
        assert_eq!((1..=10_000).filter_map(|n| progress.line(n)).count(), 0);
        progress.last_line -= Duration::from_secs(2);
        assert_eq!(progress.line(10_001).as_deref(), Some("commerce: 10001 keys"));
        assert_eq!(progress.line(10_002), None);
    }
}
