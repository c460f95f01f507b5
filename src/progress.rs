//! How `fleet run` shows its progress. In a terminal: a live bar of env
//! steps toward `run.max_env_steps` with steps/s, the return, the policy
//! lag and the time left, redrawn every second. Anywhere else (CI,
//! `docker logs`, a pipe): one plain line per progress interval. `-q` shows
//! neither (only the outcome and errors); `-v` adds the plain lines above
//! the bar and lets the child processes log at `info` (`-vv`: `debug`).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::runs::ProgressRow;

/// How much `fleet` says, from `-q` and `-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}

impl Verbosity {
    pub fn from_flags(quiet: bool, verbose: u8) -> Self {
        match (quiet, verbose) {
            (true, _) => Self::Quiet,
            (false, 0) => Self::Normal,
            (false, 1) => Self::Verbose,
            (false, _) => Self::Debug,
        }
    }

    /// The log filter of this process where `RUST_LOG` does not set one.
    pub fn log_filter(self) -> &'static str {
        match self {
            Self::Quiet => "warn",
            Self::Normal | Self::Verbose => "info",
            Self::Debug => "debug",
        }
    }

    /// The log filter of `fleet run`'s children where `RUST_LOG` does not
    /// set one: they only warn unless asked, so that their lines do not
    /// bury the progress.
    pub fn child_log_filter(self) -> &'static str {
        match self {
            Self::Quiet | Self::Normal => "warn",
            Self::Verbose => "info",
            Self::Debug => "debug",
        }
    }
}

/// What the bar shows between progress lines, read at every check.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub env_steps: u64,
    pub step_return: Option<f64>,
    pub policy_lag: Option<f64>,
    pub learner_updates: u64,
}

/// Where progress goes: a bar, plain lines, or nowhere.
#[derive(Debug)]
pub struct ProgressView {
    verbosity: Verbosity,
    bar: Option<ProgressBar>,
}

impl ProgressView {
    /// A bar when stdout is a terminal and not `-q`; `max_env_steps` is the
    /// bar's end, `env_steps` where it starts (earlier segments of a
    /// resumed run).
    pub fn new(verbosity: Verbosity, max_env_steps: u64, env_steps: u64) -> Self {
        let bar = (verbosity > Verbosity::Quiet && std::io::stdout().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(max_env_steps), ProgressDrawTarget::stdout())
                .with_style(bar_style())
                .with_position(env_steps);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self { verbosity, bar }
    }

    /// A line for the user (start-up addresses, the target reached, a
    /// stop): printed above the bar, or plainly; nothing with `-q`.
    pub fn say(&self, line: &str) {
        match (&self.bar, self.verbosity) {
            (_, Verbosity::Quiet) => {}
            (Some(bar), _) => bar.println(line),
            (None, _) => println!("{line}"),
        }
    }

    /// Moves the bar to the latest check.
    pub fn update(&self, live: &Live) {
        if let Some(bar) = &self.bar {
            bar.set_position(live.env_steps);
            bar.set_message(live_message(live));
        }
    }

    /// A progress period ended: its line, where lines are shown.
    pub fn row(&self, row: &ProgressRow) {
        let line = progress_line(row);
        match (&self.bar, self.verbosity) {
            (_, Verbosity::Quiet) => {}
            (Some(bar), Verbosity::Verbose | Verbosity::Debug) => bar.println(line),
            (Some(_), _) => {}
            (None, _) => println!("{line}"),
        }
    }

    /// Removes the bar, leaving the lines printed above it.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        self.finish();
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{elapsed_precise} [{bar:32.cyan/blue}] {human_pos}/{human_len} env steps  {rate} steps/s  ETA {eta}\n{msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{}", HumanCount(state.per_sec() as u64));
    })
    .progress_chars("=> ")
}

fn live_message(live: &Live) -> String {
    let step_return = live.step_return.map_or("n/a".into(), |r| format!("{r:.1}"));
    let lag = live.policy_lag.map_or("n/a".into(), |l| format!("{l:.1}"));
    format!(
        "return {step_return} (step-weighted)  policy lag {lag}  learner updates {}",
        HumanCount(live.learner_updates)
    )
}

/// The plain progress line of a row.
pub fn progress_line(row: &ProgressRow) -> String {
    let value = |r: Option<f64>| r.map_or("   n/a".to_string(), |r| format!("{r:>6.1}"));
    let spread = match (row.return_min, row.return_median, row.return_max) {
        (Some(min), Some(median), Some(max)) => format!(": min {min:.1} median {median:.1} max {max:.1}"),
        _ => String::new(),
    };
    format!(
        "[{:>6.0}s] env steps {:>9}  {:>8.0} steps/s  return {} (step-weighted)  {} (last 100 of {} episodes{spread})  learner updates {:>7}  policy lag {}",
        row.wall_seconds,
        row.env_steps,
        row.env_steps_per_second,
        value(row.return_step_weighted),
        value(row.return_mean),
        row.episodes,
        row.learner_updates,
        row.policy_lag.map_or("n/a".to_string(), |l| format!("{l:.2}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_levels() {
        assert_eq!(Verbosity::from_flags(true, 2), Verbosity::Quiet);
        assert_eq!(Verbosity::from_flags(false, 0), Verbosity::Normal);
        assert_eq!(Verbosity::from_flags(false, 1), Verbosity::Verbose);
        assert_eq!(Verbosity::from_flags(false, 3), Verbosity::Debug);
        assert_eq!(Verbosity::Normal.child_log_filter(), "warn");
        assert_eq!(Verbosity::Verbose.child_log_filter(), "info");
        assert_eq!(Verbosity::Quiet.log_filter(), "warn");
    }

    #[test]
    fn the_line_shows_the_spread_once_known() {
        let mut row = ProgressRow {
            wall_seconds: 3.0,
            env_steps: 1000,
            return_mean: Some(20.0),
            ..ProgressRow::default()
        };
        assert!(!progress_line(&row).contains("median"));
        row.return_min = Some(9.0);
        row.return_median = Some(18.5);
        row.return_max = Some(61.0);
        let line = progress_line(&row);
        assert!(line.contains("episodes: min 9.0 median 18.5 max 61.0)"), "{line}");
        assert!(line.contains("env steps      1000"), "{line}");
    }
}
