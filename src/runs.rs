//! Run folders: what `fleet run` leaves on disk and `fleet plot` and
//! `fleet run --resume` read back. One run is one folder,
//! `<run-dir>/<name>/`, holding
//!
//! - `config.toml`: the effective config (default, file, environment,
//!   flags), before `fleet run` derives the children's settings from it;
//! - `progress.csv`: one row per progress line (see [`PROGRESS_HEADER`]);
//! - `checkpoints/`: the learner's checkpoints, unless
//!   `learner.checkpoint_dir` names another place;
//! - `policy.safetensors`: the learner's newest weights at exit;
//! - `summary.json`: how the run stands ([`Summary`]), written at start
//!   with status `running` and again at exit.
//!
//! This module only reads and writes those files; starting processes and
//! scraping their metrics is the launcher's.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::config::Config;

pub const CONFIG_FILE: &str = "config.toml";
pub const PROGRESS_FILE: &str = "progress.csv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const POLICY_FILE: &str = "policy.safetensors";
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// The columns of `progress.csv`, in order. An empty field means the value
/// was not known yet (a return before 100 episodes or 50,000 env steps have
/// finished, a loss before the first update, the lag of a period without
/// updates).
pub const PROGRESS_HEADER: &str = "wall_seconds,env_steps,env_steps_per_second,episodes,return_mean,return_median,return_min,return_max,return_step_weighted,learner_updates,loss_policy,loss_baseline,loss_entropy,loss_total,policy_lag";

/// One progress period, as `fleet run` prints it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressRow {
    /// Seconds since the run first started (earlier segments included on resume).
    pub wall_seconds: f64,
    /// Env steps taken by all actors, earlier segments included.
    pub env_steps: u64,
    /// Env steps per second over the period.
    pub env_steps_per_second: f64,
    /// Episodes finished by all actors, earlier segments included.
    pub episodes: u64,
    /// Mean return of the fleet's last 100 episodes.
    pub return_mean: Option<f64>,
    /// Median of those episodes' returns: exact with one actor; with
    /// several, the median of the actors' own medians weighted by their
    /// episodes (each actor keeps only its share of the 100).
    pub return_median: Option<f64>,
    /// Lowest and highest of those episodes' returns.
    pub return_min: Option<f64>,
    pub return_max: Option<f64>,
    /// Step-weighted mean return over the last 50,000 env steps (the one
    /// the target is judged on).
    pub return_step_weighted: Option<f64>,
    /// Learner updates, counted from the run's first start.
    pub learner_updates: u64,
    /// The latest update's loss terms (`fleet_learner_loss`).
    pub loss_policy: Option<f64>,
    pub loss_baseline: Option<f64>,
    /// Minus the mean entropy.
    pub loss_entropy: Option<f64>,
    pub loss_total: Option<f64>,
    /// Mean policy lag (learner version minus behaviour version) over the
    /// period's learning steps.
    pub policy_lag: Option<f64>,
}

impl ProgressRow {
    /// The row as a CSV line (no newline).
    pub fn to_csv(&self) -> String {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        let mut line = String::new();
        let _ = write!(
            line,
            "{:.3},{},{:.1},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.wall_seconds,
            self.env_steps,
            self.env_steps_per_second,
            self.episodes,
            opt(self.return_mean),
            opt(self.return_median),
            opt(self.return_min),
            opt(self.return_max),
            opt(self.return_step_weighted),
            self.learner_updates,
            opt(self.loss_policy),
            opt(self.loss_baseline),
            opt(self.loss_entropy),
            opt(self.loss_total),
            opt(self.policy_lag),
        );
        line
    }

    /// Parses one CSV line written by [`ProgressRow::to_csv`].
    pub fn from_csv(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let columns = PROGRESS_HEADER.split(',').count();
        if fields.len() != columns {
            bail!("expected {columns} fields, found {}", fields.len());
        }
        let column = |i: usize| PROGRESS_HEADER.split(',').nth(i).unwrap_or("?");
        let float = |i: usize| -> Result<f64> {
            let v: f64 = fields[i]
                .parse()
                .map_err(|_| anyhow!("{}: `{}` is not a number", column(i), fields[i]))?;
            if !v.is_finite() {
                bail!("{}: `{}` is not finite", column(i), fields[i]);
            }
            Ok(v)
        };
        let int = |i: usize| -> Result<u64> {
            fields[i]
                .parse()
                .map_err(|_| anyhow!("{}: `{}` is not a whole number", column(i), fields[i]))
        };
        let opt = |i: usize| -> Result<Option<f64>> { if fields[i].is_empty() { Ok(None) } else { float(i).map(Some) } };
        Ok(Self {
            wall_seconds: float(0)?,
            env_steps: int(1)?,
            env_steps_per_second: float(2)?,
            episodes: int(3)?,
            return_mean: opt(4)?,
            return_median: opt(5)?,
            return_min: opt(6)?,
            return_max: opt(7)?,
            return_step_weighted: opt(8)?,
            learner_updates: int(9)?,
            loss_policy: opt(10)?,
            loss_baseline: opt(11)?,
            loss_entropy: opt(12)?,
            loss_total: opt(13)?,
            policy_lag: opt(14)?,
        })
    }
}

/// Reads a progress file: the header, then rows with env steps that never
/// go down. Any error names the file (and the line).
pub fn read_progress(path: &Path) -> Result<Vec<ProgressRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim() == PROGRESS_HEADER => {}
        Some((_, header)) => bail!(
            "{}: line 1: expected the header `{PROGRESS_HEADER}`, found `{header}`",
            path.display()
        ),
        None => bail!("{}: empty progress file (no header)", path.display()),
    }
    let mut rows: Vec<ProgressRow> = Vec::new();
    for (i, line) in lines {
        let row = ProgressRow::from_csv(line).with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if let Some(last) = rows.last()
            && row.env_steps < last.env_steps
        {
            bail!(
                "{}: line {}: env steps go down ({} after {})",
                path.display(),
                i + 1,
                row.env_steps,
                last.env_steps
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// How a run stands; `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The folder's name.
    pub name: String,
    /// `running` while `fleet run` runs (or if it died without a word),
    /// then `target_reached`, `collapsed` (fell below run.hold_min_return
    /// after reaching the target), `budget_exhausted`, `interrupted` or
    /// `failed` (an error, e.g. a child process died).
    pub status: String,
    /// UTC, RFC 3339, of the run's first start.
    pub start_time: String,
    /// UTC, RFC 3339, of the latest exit; `null` while running.
    pub end_time: Option<String>,
    /// Seconds of training, over all segments.
    pub wall_seconds: f64,
    pub env_steps: u64,
    pub episodes: u64,
    pub learner_updates: u64,
    /// Mean return of the last 100 episodes at the last progress row.
    pub final_mean_return: Option<f64>,
    /// The step-weighted return at the last progress row.
    pub final_step_weighted_return: Option<f64>,
    pub target_return: f64,
    /// Whether the step-weighted return reached `target_return`, and at
    /// which env step it first did.
    pub target_reached: bool,
    pub target_reached_at_env_step: Option<u64>,
    /// How many times `fleet run` started on this folder (1 + resumes).
    pub segments: u32,
}

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunFolder {
    pub path: PathBuf,
    pub name: String,
}

impl RunFolder {
    /// Makes a new run folder under `parent` (created if need be). `name`
    /// that exists already is an error naming it; without a name, the UTC
    /// time of `now` (`20261204-233501`), with `-2`, `-3`, … appended if
    /// another run started in the same second.
    pub fn create(parent: &Path, name: Option<&str>, now: SystemTime) -> Result<Self> {
        std::fs::create_dir_all(parent).with_context(|| format!("creating the run directory {}", parent.display()))?;
        if let Some(name) = name {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                bail!("run name `{name}` must be a plain folder name");
            }
            let path = parent.join(name);
            return match std::fs::create_dir(&path) {
                Ok(()) => Ok(Self {
                    path,
                    name: name.to_string(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                    "run folder {} exists already: pick another --name, or continue it with --resume {}",
                    path.display(),
                    path.display()
                ),
                Err(e) => Err(e).with_context(|| format!("creating the run folder {}", path.display())),
            };
        }
        let stamp = timestamp(now);
        for n in 1u32.. {
            let name = if n == 1 { stamp.clone() } else { format!("{stamp}-{n}") };
            let path = parent.join(&name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, name }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating the run folder {}", path.display())),
            }
        }
        unreachable!("u32 names run out")
    }

    /// An existing run folder, to resume: it must hold a `config.toml`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            bail!("run folder {} does not exist", path.display());
        }
        let config = path.join(CONFIG_FILE);
        if !config.is_file() {
            bail!("{} is missing: {} is not a run folder", config.display(), path.display());
        }
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self {
            path: path.to_path_buf(),
            name,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    pub fn progress_path(&self) -> PathBuf {
        self.path.join(PROGRESS_FILE)
    }

    pub fn summary_path(&self) -> PathBuf {
        self.path.join(SUMMARY_FILE)
    }

    pub fn policy_path(&self) -> PathBuf {
        self.path.join(POLICY_FILE)
    }

    /// Where the learner checkpoints when `learner.checkpoint_dir` is empty.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINT_DIR)
    }

    pub fn write_config(&self, config: &Config) -> Result<()> {
        write_atomically(&self.config_path(), config.to_toml()?.as_bytes())
    }

    /// The summary, if the folder has one.
    pub fn read_summary(&self) -> Result<Option<Summary>> {
        let path = self.summary_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(summary).context("serialising the summary")?;
        json.push(b'\n');
        write_atomically(&self.summary_path(), &json)
    }

    /// The progress rows so far (none if there is no file yet).
    pub fn read_progress(&self) -> Result<Vec<ProgressRow>> {
        let path = self.progress_path();
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_progress(&path)
    }

    /// Opens the progress file for appending, writing the header if it is new.
    pub fn progress_writer(&self) -> Result<ProgressWriter> {
        let path = self.progress_path();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        if empty {
            writeln!(file, "{PROGRESS_HEADER}").with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(ProgressWriter { file, path })
    }

    pub fn write_policy(&self, bytes: &[u8]) -> Result<()> {
        write_atomically(&self.policy_path(), bytes)
    }
}

/// Appends rows to `progress.csv`, each written through at once so that a
/// run that dies keeps its rows.
#[derive(Debug)]
pub struct ProgressWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl ProgressWriter {
    pub fn append(&mut self, row: &ProgressRow) -> Result<()> {
        writeln!(self.file, "{}", row.to_csv()).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: readers see the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `20261204-233501`: the UTC date and time of `t`, for folder names.
pub fn timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// `2026-12-04T23:35:01Z`: RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The civil UTC date and time of `t` (Howard Hinnant's days-to-date).
fn utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(timestamp(at(0)), "19700101-000000");
        assert_eq!(rfc3339(at(951_827_696)), "2000-02-29T12:34:56Z");
        assert_eq!(timestamp(at(1_796_427_301)), "20261204-233501");
    }

    #[test]
    fn rows_read_back_as_written() {
        let row = ProgressRow {
            wall_seconds: 12.5,
            env_steps: 4000,
            env_steps_per_second: 321.0,
            episodes: 150,
            return_mean: Some(23.25),
            return_median: Some(20.0),
            return_min: Some(9.0),
            return_max: None,
            return_step_weighted: None,
            learner_updates: 17,
            loss_policy: Some(-0.125),
            loss_baseline: Some(3.5),
            loss_entropy: Some(-0.69),
            loss_total: Some(1.0),
            policy_lag: None,
        };
        assert_eq!(PROGRESS_HEADER.split(',').count(), row.to_csv().split(',').count());
        assert_eq!(ProgressRow::from_csv(&row.to_csv()).unwrap(), row);
    }

    #[test]
    fn bad_progress_files_are_errors_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRESS_FILE);
        let good = ProgressRow {
            env_steps: 10,
            ..ProgressRow::default()
        };
        let cases = [
            (String::new(), "empty"),
            ("a,b\n".to_string(), "line 1"),
            (format!("{PROGRESS_HEADER}\n{}\n1,2\n", good.to_csv()), "line 3"),
            (format!("{PROGRESS_HEADER}\n{}\n", good.to_csv().replace("10", "ten")), "env_steps"),
            (
                format!("{PROGRESS_HEADER}\n{}\n{}\n", good.to_csv(), ProgressRow::default().to_csv()),
                "go down",
            ),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, &text).unwrap();
            let error = format!("{:#}", read_progress(&path).unwrap_err());
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(expected), "{error}");
        }
        std::fs::write(&path, format!("{PROGRESS_HEADER}\n{}\n", good.to_csv())).unwrap();
        assert_eq!(read_progress(&path).unwrap(), vec![good]);
    }

    #[test]
    fn summaries_read_back_exactly_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let folder = RunFolder::create(dir.path(), Some("s"), UNIX_EPOCH).unwrap();
        let summary = Summary {
            name: "s".into(),
            status: "budget_exhausted".into(),
            start_time: "2026-12-04T23:35:01Z".into(),
            end_time: None,
            wall_seconds: 12.345678901234567,
            env_steps: 40_000,
            episodes: 321,
            learner_updates: 77,
            // A mean that JSON parsing without exact rounding read back
            // one unit in the last place off, so that the summary and the
            // last progress row of the same run disagreed.
            final_mean_return: Some(124.72643319740945),
            final_step_weighted_return: Some(0.1 + 0.2),
            target_return: 475.0,
            target_reached: false,
            target_reached_at_env_step: None,
            segments: 2,
        };
        folder.write_summary(&summary).unwrap();
        assert_eq!(folder.read_summary().unwrap(), Some(summary));
    }

    #[test]
    fn names_are_unique_and_explicit_ones_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_796_427_301);
        let a = RunFolder::create(dir.path(), None, now).unwrap();
        let b = RunFolder::create(dir.path(), None, now).unwrap();
        assert_eq!(a.name, "20261204-233501");
        assert_eq!(b.name, "20261204-233501-2");
        RunFolder::create(dir.path(), Some("x"), now).unwrap();
        let error = RunFolder::create(dir.path(), Some("x"), now).unwrap_err().to_string();
        assert!(error.contains(&dir.path().join("x").display().to_string()), "{error}");
        assert!(RunFolder::create(dir.path(), Some("../x"), now).is_err());
    }
}
