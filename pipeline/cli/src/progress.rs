//! Progress of a long run over history (`replay`, `backtest`): a bar with
//! events/s and the event-time position on a terminal, a line every
//! 10 seconds otherwise (logs want a record, not redraws).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar: position, rate, event time and firings, time left.
const TEMPLATE: &str =
    "{bar:30} {percent:>3}% {human_pos}/{human_len} items, {per_sec} {msg} (eta {eta})";

/// How often the line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// Progress over `total` items.
pub struct Progress {
    what: &'static str,
    total: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    /// `what`: the verb in the log line ("replayed").
    pub fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            // The template is a constant, checked by a test below.
            let style = ProgressStyle::with_template(TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Progress {
            what,
            total,
            started: Instant::now(),
            bar,
            last_line: Instant::now(),
        }
    }

    /// `done` items so far, the event time reached and the firings.
    pub fn update(&mut self, done: u64, event_time_us: i64, firings: usize) {
        let at = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(event_time_us)
            .map_or_else(|| "?".into(), |t| t.format("%Y-%m-%d %H:%M").to_string());
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("at {at}, {firings} firings"));
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            eprintln!(
                "{} {done}/{} items ({:.0}%, {:.0} items/s), event time {at}, {firings} firings",
                self.what,
                self.total,
                done as f64 * 100.0 / self.total.max(1) as f64,
                done as f64 / self.started.elapsed().as_secs_f64().max(1e-9),
            );
        }
    }

    /// Clears the bar (the run prints its own summary).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_template_parses() {
        indicatif::ProgressStyle::with_template(super::TEMPLATE).expect("template");
    }
}
