//! Run folders and curves: a short seeded `fleet run` on CartPole leaves
//! its config, progress rows, summary, checkpoints and final policy in its
//! folder; `--resume` goes on from the counters where it stopped; and
//! `fleet plot` draws run folders into a PNG of the asked size, or names
//! the file it cannot read.

use std::path::Path;
use std::time::Duration;

use fleet::runs::{ProgressRow, RunFolder, Summary, read_progress};
use tokio::process::Command;

use crate::support::FLEET;

async fn fleet(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(FLEET).args(args).env("RUST_LOG", "warn").kill_on_drop(true).output(),
    )
    .await
    .expect("fleet finished in time")
    .unwrap()
}

fn summary(folder: &Path) -> Summary {
    serde_json::from_slice(&std::fs::read(folder.join("summary.json")).unwrap()).unwrap()
}

/// The value after `label ` in `line`, up to the next comma or space.
fn number_after(line: &str, label: &str) -> u64 {
    let rest = &line[line.find(label).unwrap_or_else(|| panic!("`{label}` in `{line}`")) + label.len()..];
    rest.trim_start()
        .split([',', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("a number after `{label}` in `{line}`"))
}

/// The summary agrees with the last progress row.
fn assert_summary_matches(summary: &Summary, last: &ProgressRow) {
    assert_eq!(summary.env_steps, last.env_steps);
    assert_eq!(summary.episodes, last.episodes);
    assert_eq!(summary.learner_updates, last.learner_updates);
    assert_eq!(summary.wall_seconds, last.wall_seconds);
    assert_eq!(summary.final_mean_return, last.return_mean);
    assert_eq!(summary.final_step_weighted_return, last.return_step_weighted);
}

fn assert_rows_advance(rows: &[ProgressRow]) {
    for pair in rows.windows(2) {
        assert!(pair[1].env_steps > pair[0].env_steps, "{pair:?}");
        assert!(pair[1].episodes >= pair[0].episodes, "{pair:?}");
        assert!(pair[1].learner_updates >= pair[0].learner_updates, "{pair:?}");
        assert!(pair[1].wall_seconds > pair[0].wall_seconds, "{pair:?}");
    }
}

#[tokio::test]
async fn a_run_writes_its_folder_and_resumes_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_str().unwrap();
    let interval = "run.progress_interval_secs=0.2";
    let out = fleet(&[
        "run",
        "--seed",
        "7",
        "--actors",
        "1",
        "--max-env-steps",
        "30000",
        "--set",
        interval,
        "--run-dir",
        run_dir,
        "--name",
        "r",
        "--tensorboard",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "budget exhausted:\n{stdout}\n{stderr}");
    let folder = dir.path().join("r");

    // The effective config, flags included.
    let config: toml::Table = std::fs::read_to_string(folder.join("config.toml")).unwrap().parse().unwrap();
    assert_eq!(config["seed"].as_integer(), Some(7));
    assert_eq!(config["run"]["max_env_steps"].as_integer(), Some(30000));
    assert_eq!(config["run"]["actors"].as_integer(), Some(1));
    assert_eq!(config["env"]["name"].as_str(), Some("CartPole-v1"));

    // One row per progress line, going forward, and learning under way.
    let rows = read_progress(&folder.join("progress.csv")).unwrap();
    let lines = stdout.lines().filter(|l| l.starts_with('[')).count();
    assert_eq!(rows.len(), lines, "{stdout}");
    assert!(rows.len() >= 2, "{stdout}");
    assert_rows_advance(&rows);
    let last = rows.last().unwrap();
    assert!(last.env_steps >= 30000, "{last:?}");
    assert!(
        last.learner_updates > 0 && last.loss_total.is_some() && last.policy_lag.is_some(),
        "{last:?}"
    );
    let mean = last.return_mean.expect("a mean return once 100 episodes have finished");
    assert!((8.0..=500.0).contains(&mean), "CartPole returns lie in [8, 500]: {mean}");
    for row in rows.iter().filter(|r| r.return_mean.is_some()) {
        let (Some(min), Some(median), Some(max)) = (row.return_min, row.return_median, row.return_max) else {
            panic!("the spread is known with the mean: {row:?}");
        };
        assert!(8.0 <= min && min <= median && median <= max && max <= 500.0, "{row:?}");
        assert!(min <= row.return_mean.unwrap() && row.return_mean.unwrap() <= max, "{row:?}");
    }
    assert_events_match(&folder, &rows, 1);
    assert!(last.return_step_weighted.is_none(), "fewer than 50,000 steps: {last:?}");

    let first = summary(&folder);
    assert_eq!(first.name, "r");
    assert_eq!(first.status, "budget_exhausted");
    assert_eq!(first.segments, 1);
    assert!(!first.target_reached && first.target_reached_at_env_step.is_none());
    assert!(first.end_time.is_some());
    assert_summary_matches(&first, last);

    // The final policy: the learner's parameters under their names.
    let policy = std::fs::read(folder.join("policy.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&policy).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
    names.sort();
    let expected = [
        "policy.bias",
        "policy.weight",
        "policy_tower.0.bias",
        "policy_tower.0.weight",
        "policy_tower.1.bias",
        "policy_tower.1.weight",
        "value.bias",
        "value.weight",
        "value_tower.0.bias",
        "value_tower.0.weight",
        "value_tower.1.bias",
        "value_tower.1.weight",
    ];
    assert_eq!(names, expected);
    assert_eq!(tensors.tensor("policy_tower.0.weight").unwrap().shape(), &[64, 4]);
    assert_eq!(tensors.tensor("policy.weight").unwrap().shape(), &[2, 64]);
    let checkpoint = fleet_learner::checkpoint::latest(&folder.join("checkpoints"), &candle_core::Device::Cpu)
        .unwrap()
        .expect("the learner's final checkpoint in the run folder");
    assert_eq!(policy, checkpoint.model, "the policy is the newest checkpoint's weights");
    assert!(checkpoint.meta.updates >= last.learner_updates);

    // A name in use is refused, naming the folder.
    let out = fleet(&["run", "--run-dir", run_dir, "--name", "r"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&folder.display().to_string()) && stderr.contains("exists already"),
        "{stderr}"
    );

    // Resuming goes on from the counters where the run stopped.
    let folder_arg = folder.to_str().unwrap();
    let out = fleet(&["run", "--resume", folder_arg, "--max-env-steps", "60000"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let resumed = stdout.lines().find(|l| l.starts_with("resuming from")).expect(&stdout);
    assert_eq!(number_after(resumed, "env steps"), first.env_steps, "{resumed}");
    assert_eq!(number_after(resumed, "episodes"), first.episodes, "{resumed}");
    assert_eq!(number_after(resumed, "learner updates"), checkpoint.meta.updates, "{resumed}");
    assert_eq!(number_after(resumed, "weights version"), checkpoint.meta.version, "{resumed}");

    let all = read_progress(&folder.join("progress.csv")).unwrap();
    assert_eq!(&all[..rows.len()], &rows[..], "earlier rows are kept");
    let new = &all[rows.len()..];
    assert!(!new.is_empty(), "{stdout}");
    assert_rows_advance(&all);
    assert!(new[0].env_steps > first.env_steps, "{:?}", new[0]);
    assert!(new[0].episodes >= first.episodes, "{:?}", new[0]);
    assert!(new[0].learner_updates >= checkpoint.meta.updates, "{:?}", new[0]);
    assert!(new[0].wall_seconds > first.wall_seconds, "{:?}", new[0]);
    assert!(all.last().unwrap().env_steps >= 60000);
    assert_events_match(&folder, &all, 2);
    let second = summary(&folder);
    assert_eq!(second.segments, 2);
    assert_eq!(second.start_time, first.start_time);
    assert_summary_matches(&second, all.last().unwrap());
    let resumed_checkpoint = fleet_learner::checkpoint::latest(&folder.join("checkpoints"), &candle_core::Device::Cpu)
        .unwrap()
        .unwrap();
    assert!(resumed_checkpoint.meta.updates >= all.last().unwrap().learner_updates);
    assert!(resumed_checkpoint.meta.version > checkpoint.meta.version);
}

/// The run's TensorBoard files (`files` of them, one per start) hold one
/// event per progress row, at its env step, with its values; and
/// TensorBoard itself reads them where Python has it.
fn assert_events_match(folder: &Path, rows: &[ProgressRow], files: usize) {
    use fleet::tensorboard::{Scalar, What, read_events};
    let dir = folder.join("tensorboard");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert_eq!(paths.len(), files, "{paths:?}");
    let mut summaries = Vec::new();
    for path in &paths {
        let events = read_events(path).unwrap();
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into())),
            "{}",
            path.display()
        );
        summaries.extend(events.into_iter().skip(1));
    }
    // Files are named by their start time, so sorted they are in order.
    summaries.sort_by_key(|e| e.step);
    assert_eq!(summaries.len(), rows.len());
    for (event, row) in summaries.iter().zip(rows) {
        assert_eq!(event.step as u64, row.env_steps);
        let Some(What::Summary(summary)) = &event.what else {
            panic!("{event:?}")
        };
        let value = |tag: &str| {
            summary.value.iter().find(|v| v.tag == tag).map(|v| match v.value {
                Some(Scalar::SimpleValue(x)) => f64::from(x),
                None => panic!("{tag} without a value"),
            })
        };
        assert_eq!(value("return/mean_100_episodes"), row.return_mean.map(|r| f64::from(r as f32)));
        assert_eq!(value("progress/learner_updates"), Some(row.learner_updates as f32 as f64));
    }
    let Some(python) = crate::support::python_with("tensorboard", "pip install tensorboard") else {
        return;
    };
    let script = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
events = acc.Scalars("progress/episodes")
print(len(events), events[-1].step, int(events[-1].value))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let last = rows.last().unwrap();
    let expected = format!("{} {} {}", rows.len(), last.env_steps, last.episodes);
    assert_eq!(stdout.trim(), expected, "TensorBoard's reading");
}

#[tokio::test]
async fn quiet_runs_print_no_progress() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleet(&[
        "run",
        "-q",
        "--actors",
        "1",
        "--max-env-steps",
        "3000",
        "--set",
        "run.progress_interval_secs=0.2",
        "--run-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "", "nothing on stdout with -q");
    assert!(stderr.contains("budget exhausted"), "the outcome is still told: {stderr}");
    // The rows are still recorded.
    let folder = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    assert!(!read_progress(&folder.join("progress.csv")).unwrap().is_empty());
}

/// A run folder with the given seed and config tail, and rows whose mean
/// return climbs from `start`.
fn fake_run(dir: &Path, name: &str, seed: u64, extra: &str, start: f64) -> String {
    let path = dir.join(name);
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("config.toml"), format!("seed = {seed}\n{extra}[run]\nactors = 2\n")).unwrap();
    let folder = RunFolder::open(&path).unwrap();
    let mut writer = folder.progress_writer().unwrap();
    for i in 0..20u64 {
        writer
            .append(&ProgressRow {
                wall_seconds: i as f64,
                env_steps: 1000 * i + seed,
                episodes: 10 * i,
                return_mean: (i > 1).then_some(start + 20.0 * i as f64),
                learner_updates: 5 * i,
                ..ProgressRow::default()
            })
            .unwrap();
    }
    path.to_str().unwrap().to_string()
}

/// Decodes a PNG: (width, height, RGB(A) pixels, bytes per pixel).
fn decode(path: &Path) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type.samples())
}

#[tokio::test]
async fn plot_draws_curves_of_the_asked_size_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let a = fake_run(dir.path(), "a", 1, "", 20.0);
    let b = fake_run(dir.path(), "b", 2, "", 60.0);
    let c = fake_run(dir.path(), "c", 1, "[env]\nname = \"catch\"\n", 0.0);
    let output = dir.path().join("curve.png");
    let png = output.to_str().unwrap();
    for x in ["steps", "time"] {
        let out = fleet(&["plot", &a, &b, &c, "-o", png, "--x", x, "--width", "640", "--height", "400"]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (width, height, pixels, channels) = decode(&output);
        assert_eq!((width, height), (640, 400));
        // Curves and bands are the only coloured pixels (the background is
        // white, the grid and any text grey): count those in the plot area.
        let coloured = (height / 10..height * 9 / 10)
            .flat_map(|y| (width / 8..width * 19 / 20).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let i = (y * width + x) as usize * channels;
                let (r, g, b) = (pixels[i], pixels[i + 1], pixels[i + 2]);
                r.max(g).max(b) - r.min(g).min(b) > 40
            })
            .count();
        assert!(coloured > 500, "--x {x}: {coloured} coloured pixels in the plot area");
        std::fs::remove_file(&output).unwrap();
    }

    let missing = dir.path().join("missing");
    let out = fleet(&["plot", &a, missing.to_str().unwrap(), "-o", png]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    let progress = Path::new(&b).join("progress.csv");
    let text = std::fs::read_to_string(&progress).unwrap();
    let corrupt = text.replacen(",3002,", ",three thousand,", 1);
    assert_ne!(corrupt, text);
    std::fs::write(&progress, corrupt).unwrap();
    let out = fleet(&["plot", &a, &b, "-o", png]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&progress.display().to_string()), "{stderr}");
    assert!(!output.exists(), "no image from bad input");
}

/// `fleet record` writes the run folder of a fleet started role by role (as
/// compose starts it): progress rows from every process's `/metrics`, the
/// summary, and the policy from the learner's checkpoint folder. It stops
/// nothing: the roles are still serving after it ends.
#[tokio::test]
async fn record_writes_the_folder_of_a_fleet_started_role_by_role() {
    use crate::support::start;
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    std::fs::create_dir(&checkpoints).unwrap();
    let checkpoint_dir = format!("learner.checkpoint_dir={}", checkpoints.display());
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let learner = start(&[
        "learner",
        "--listen",
        "127.0.0.1:0",
        "--replay",
        &replay.grpc,
        "--set",
        &checkpoint_dir,
        "--set",
        "learner.checkpoint_interval_secs=0.5",
    ])
    .await;
    let actor = start(&["actor", "--actor-id", "1", "--replay", &replay.grpc, "--learner", &learner.grpc]).await;
    // The recording copies the newest checkpoint when it ends: wait for the
    // learner's first, then give the recording its steps from there (a fast
    // machine steps a fixed budget before the first checkpoint).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fleet_learner::checkpoint::latest(&checkpoints, &candle_core::Device::Cpu)
        .ok()
        .flatten()
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "no learner checkpoint within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steps_now = || async {
        let samples = crate::support::scrape(&actor.metrics).await.unwrap();
        crate::support::metric(&samples, "fleet_actor_env_steps_total").unwrap_or(0.0) as u64
    };
    // About two seconds of the actor's steps, so that the recording writes
    // several rows at 0.2 s however fast the machine steps.
    let before = steps_now().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stepped = steps_now().await;
    let max_env_steps = stepped + (2 * (stepped - before)).max(40_000);
    let budget = format!("run.max_env_steps={max_env_steps}");
    let out = fleet(&[
        "record",
        "--metrics",
        &replay.metrics,
        "--metrics",
        &learner.metrics,
        "--metrics",
        &actor.metrics,
        "--run-dir",
        dir.path().to_str().unwrap(),
        "--name",
        "cluster",
        "--set",
        &checkpoint_dir,
        "--set",
        &budget,
        // CartPole can solve while the recording waits for its budget.
        "--set",
        "run.target_return=1e9",
        "--set",
        "run.progress_interval_secs=0.2",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "budget exhausted:\n{stdout}\n{stderr}");
    let folder = dir.path().join("cluster");
    let rows = read_progress(&folder.join("progress.csv")).unwrap();
    assert!(rows.len() >= 2, "{stdout}");
    assert_rows_advance(&rows);
    let last = rows.last().unwrap();
    assert!(last.env_steps >= max_env_steps, "{last:?}");
    assert!(last.learner_updates > 0 && last.loss_total.is_some(), "{last:?}");
    assert!(last.return_mean.is_some() && last.return_median.is_some(), "{last:?}");
    let summary = summary(&folder);
    assert_eq!(summary.status, "budget_exhausted");
    assert_summary_matches(&summary, last);
    let policy = std::fs::read(folder.join("policy.safetensors")).expect("the policy from the learner's checkpoints");
    safetensors::SafeTensors::deserialize(&policy).unwrap();
    // Nothing was stopped.
    for role in [&replay, &learner, &actor] {
        assert!(crate::support::scrape(&role.metrics).await.is_ok(), "{} still serves", role.name);
    }

    // An address that cannot be read is an error naming it.
    drop(actor);
    let gone = "127.0.0.1:9";
    let out = fleet(&[
        "record",
        "--metrics",
        &learner.metrics,
        "--metrics",
        gone,
        "--run-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("--metrics {gone}")), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no folder for a failed start");
}
