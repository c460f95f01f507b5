//! The env bridge (`envbridge/`, served by Python): its own test suite, and
//! `fleet run` training through it. The Python that has the package
//! installed is `FLEET_PYTHON` (default `python3`); the tests skip, with
//! the reason, when it lacks the package (or pytest), and
//! `FLEET_REQUIRE_PYTHON=1` (CI) makes that a failure.
//!
//! Through the bridge, `fleet run` solves Gymnasium's own CartPole-v1 and
//! acts in Pendulum-v1 with continuous actions; a killed server is
//! restarted while training goes on; a bad id, a space fleet cannot
//! observe, and a spec other than the one expected stop it at start with a
//! message naming the cause. A bridged vector's observations are normalised
//! over the whole vector (`env.normalize_observations`), and the Atari frames
//! the actor stacks equal the stacks of the bridge's own preprocessing.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use fleet_actor::env::normalize::{CLIP, RunningMoments};
use fleet_actor::env::{BridgedEnvs, EnvConfig, Preprocess, VecEnv};
use fleet_trajectory::Actions;
use tokio_util::sync::CancellationToken;

use crate::support::FLEET;

/// `FLEET_PYTHON` if it can import `modules`; `None` (a printed skip) if
/// not, unless `FLEET_REQUIRE_PYTHON=1`.
fn python_with(modules: &str) -> Option<String> {
    crate::support::python_with(modules, "pip install ./envbridge pytest")
}

/// The `--set` flag that makes actors start the bridge with `python`.
fn bridge_command(python: &str) -> String {
    format!(r#"env.bridge_command=["{python}", "-m", "fleet_envbridge.cli", "--log-level", "WARNING"]"#)
}

/// `fleet run ARGS` through the bridge, with its combined output.
async fn fleet_run(python: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(FLEET)
            .arg("run")
            .args(["--set", &bridge_command(python), "--set", "run.progress_interval_secs=1"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("fleet run finished within 10 minutes")
    .unwrap();
    let output = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, output)
}

#[test]
fn the_env_bridge_serves_gymnasium_vectors_as_gymnasium_steps_them() {
    let Some(python) = python_with("fleet_envbridge, pytest") else {
        return;
    };
    let output = Command::new(&python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "envbridge/tests"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the env bridge's tests failed:\n{report}");
    assert!(report.contains(" passed"), "{report}");
}

/// Gymnasium's CartPole-v1, stepped in Python, solved by the default agent:
/// the same bar as the native CartPole's learning test. Each actor's vector
/// is split across two bridge servers.
#[tokio::test]
async fn fleet_run_solves_gymnasium_cartpole_through_the_bridge() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    let runs = tempfile::tempdir().unwrap();
    let (status, output) = fleet_run(
        &python,
        &[
            "--run-dir",
            runs.path().to_str().unwrap(),
            "--name",
            "bridged",
            "--seed",
            "1",
            "--set",
            "env.name=gym:CartPole-v1",
            // Each actor's vector in two halves, on two servers of its own.
            "--set",
            "env.bridge_streams=2",
            "--target-return",
            "475",
            "--max-env-steps",
            "1500000",
        ],
    )
    .await;
    assert!(status.success() && output.contains("target reached"), "{output}");
    assert!(
        output.contains("gym:CartPole-v1 via the env bridge: f32 observations [4], 2 discrete actions"),
        "{output}"
    );
    // The run folder records the spec the bridge gave, so that what reads
    // the folder later (eval, export, a resume) knows the shapes.
    let folder = runs.path().join("bridged");
    let config = fleet::config::Config::load(&fleet::config::ConfigSources {
        file: Some(folder.join("config.toml")),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        config.env.spec.map(|spec| spec.to_string()).as_deref(),
        Some("f32 observations [4], 2 discrete actions")
    );
}

/// `env.remote`: both actors step their vectors, two streams each, on one
/// server started beforehand (a sidecar), which the run leaves running.
#[tokio::test]
async fn fleet_run_trains_on_a_bridge_server_already_running() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    let mut server = tokio::process::Command::new(&python)
        .args(["-m", "fleet_envbridge.cli", "--listen", "127.0.0.1:0", "--log-level", "WARNING"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("the server announced its address")
        .unwrap()
        .unwrap();
    let address = line.strip_prefix("listening on ").expect("a `listening on` line").to_owned();
    let (status, output) = fleet_run(
        &python,
        &[
            "--seed",
            "3",
            "--set",
            "env.name=CartPole-v1",
            "--set",
            &format!("env.remote={address}"),
            // Two streams per actor, four on the one server.
            "--set",
            "env.bridge_streams=2",
            "--target-return",
            "200",
            "--max-env-steps",
            "1000000",
        ],
    )
    .await;
    assert!(status.success() && output.contains("target reached"), "{output}");
    assert!(output.contains("CartPole-v1 via the env bridge"), "{output}");
    assert!(server.try_wait().unwrap().is_none(), "the run stopped a server it did not start");
}

/// Pendulum-v1 stepped in Python (envpool's where it is installed,
/// Gymnasium's otherwise) with the Gaussian policy of
/// `config/pendulum.toml`: torques go out as Box actions mapped into
/// [-2, 2], and the run records finite returns of 200-step episodes, each in
/// Pendulum's range (a step costs at most π² + 0.1·8² + 0.001·2² ≈ 16.27).
/// Learning is not asked for in so short a run.
#[tokio::test]
async fn fleet_run_acts_in_pendulum_with_continuous_actions_through_the_bridge() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    let runs = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pendulum.toml");
    let (status, output) = fleet_run(
        &python,
        &[
            "--config",
            config,
            "--run-dir",
            runs.path().to_str().unwrap(),
            "--name",
            "pendulum",
            "--seed",
            "2",
            "--set",
            "env.name=gym:Pendulum-v1",
            // Enough for every actor to fill its share of the 100-episode
            // window (episodes of its 16 environments end together, 200
            // steps apart), whatever the two actors' pace.
            "--max-env-steps",
            "60000",
        ],
    )
    .await;
    assert_eq!(status.code(), Some(1), "the budget runs out before the target:\n{output}");
    assert!(
        output.contains("gym:Pendulum-v1 via the env bridge: f32 observations [3], continuous actions of 1 dimensions"),
        "{output}"
    );
    let rows = fleet::runs::read_progress(&runs.path().join("pendulum").join("progress.csv")).unwrap();
    let last = rows.last().expect("progress rows");
    assert!(last.env_steps >= 60_000 && last.learner_updates > 0, "{last:?}");
    let lowest = -200.0 * (std::f64::consts::PI.powi(2) + 0.1 * 64.0 + 0.001 * 4.0);
    let returns: Vec<f64> = rows
        .iter()
        .flat_map(|row| [row.return_mean, row.return_min, row.return_max, row.return_step_weighted])
        .flatten()
        .collect();
    assert!(!returns.is_empty(), "returns are known once 100 episodes have ended:\n{output}");
    for value in returns {
        assert!(
            value.is_finite() && (lowest..=0.0).contains(&value),
            "return {value} outside [{lowest}, 0]"
        );
    }
}

/// `env.normalize_observations` on a bridged vector split across two
/// streams: one set of running moments over all its environments, every
/// step's observations (first ones after a reset included) added as a
/// batch before they are scaled. The same vector opened raw, with the same
/// seed, gives the raw observations to check against.
#[test]
fn bridged_observations_are_normalised_over_the_whole_vector() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (num_envs, size) = (6, 3);
    let open = |normalize_observations: bool| {
        let config = EnvConfig {
            normalize_observations,
            bridge_command: [python.as_str(), "-m", "fleet_envbridge.cli", "--log-level", "WARNING"]
                .map(String::from)
                .to_vec(),
            bridge_streams: 2,
            ..EnvConfig::named("gym:Pendulum-v1")
        };
        config
            .make_vec(num_envs, 5, 64 << 20, runtime.handle().clone(), CancellationToken::new())
            .unwrap()
    };
    let (mut raw, mut scaled) = (open(false), open(true));
    let mut moments = RunningMoments::new(size);
    let mut velocities = Vec::new();
    for step in 0..600_usize {
        if step > 0 {
            let values = (0..num_envs).map(|i| ((step * 5 + i * 3) % 11) as f32 / 5.0 - 1.0).collect();
            let actions = Actions::Continuous { dims: 1, values };
            let (a, b) = (raw.step(&actions).unwrap(), scaled.step(&actions).unwrap());
            assert_eq!(a, b, "step {step}: the same episodes end");
        }
        let mut expected = raw.observations().f32().to_vec();
        moments.update_batch(&expected);
        expected.chunks_exact_mut(size).for_each(|row| moments.normalize(row));
        assert_eq!(scaled.observations().f32(), expected, "step {step}");
        assert_eq!(
            (scaled.rewards(), scaled.is_first(), scaled.truncated()),
            (raw.rewards(), raw.is_first(), raw.truncated())
        );
        velocities.extend(expected.chunks_exact(size).map(|row| row[2]));
    }
    // Pendulum's angular velocity (up to ±8 rad/s raw) on a unit scale.
    let late = &velocities[velocities.len() / 2..];
    let spread = (late.iter().map(|v| v * v).sum::<f32>() / late.len() as f32).sqrt();
    assert!((0.5..2.0).contains(&spread), "{spread}");
    assert!(velocities.iter().all(|v| v.abs() <= CLIP));
}

/// The actor stacks Atari frames itself, the bridge sending each
/// environment's newest frame alone: over two Pong episodes through their
/// terminal steps and the resets after them, the stacks equal those the
/// bridge's own Gymnasium preprocessing stacks, with the same seeds and
/// actions.
#[test]
fn frames_stacked_by_the_actor_equal_the_preprocessings_stack() {
    let Some(python) = python_with("fleet_envbridge, ale_py") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = EnvConfig {
        bridge_command: [python.as_str(), "-m", "fleet_envbridge.cli", "--log-level", "WARNING"]
            .map(String::from)
            .to_vec(),
        bridge_streams: 2,
        preprocess: Preprocess::Atari,
        ..EnvConfig::named("gym:ALE/Pong-v5")
    };
    let (num_envs, seed, bytes) = (2, 7, 64 << 20);
    let mut by_actor = config
        .make_vec(num_envs, seed, bytes, runtime.handle().clone(), CancellationToken::new())
        .unwrap();
    let served = BridgedEnvs::open(&config, num_envs, seed, bytes, runtime.handle().clone(), CancellationToken::new()).unwrap();
    let mut by_bridge = VecEnv::start(Box::new(served)).unwrap();
    assert_eq!(by_actor.spec(), by_bridge.spec());
    assert_eq!(by_actor.spec().frame().unwrap().channels, 4);
    let mut ended = [false; 2];
    let (mut step, mut moving) = (0_usize, 0_usize);
    while !ended.iter().all(|&e| e) || !by_actor.is_first().iter().any(|&f| f) {
        assert!(step < 5000, "random play ends a Pong episode long before this");
        let actions = Actions::Discrete((0..num_envs).map(|i| (step * 7 + i * 3) % 6).collect());
        let (a, b) = (by_actor.step(&actions).unwrap(), by_bridge.step(&actions).unwrap());
        assert_eq!(a, b, "step {step}: the same episodes end");
        assert!(
            by_actor.observations().u8() == by_bridge.observations().u8(),
            "step {step}: the stacks differ"
        );
        assert_eq!(
            (by_actor.rewards(), by_actor.is_first(), by_actor.terminated()),
            (by_bridge.rewards(), by_bridge.is_first(), by_bridge.terminated())
        );
        for (i, e) in ended.iter_mut().enumerate() {
            *e |= by_actor.terminated()[i];
        }
        // A stack's oldest and newest frames differ while the ball moves.
        let stack = by_actor.observation(0).u8();
        moving += usize::from(stack[..84 * 84] != stack[3 * 84 * 84..]);
        step += 1;
    }
    assert!(moving > step / 2, "{moving} of {step} stacks showed motion");
}

#[tokio::test]
async fn a_bad_env_id_or_an_unsupported_space_stops_fleet_run_naming_it() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    for (name, expected) in [("gym:NoSuchEnv-v9", "NoSuchEnv-v9"), ("gym:Blackjack-v1", "is not supported")] {
        let (status, output) = fleet_run(&python, &["--set", &format!("env.name={name}")]).await;
        assert!(!status.success(), "{name}: {output}");
        assert!(
            output.contains(expected) && output.contains(name.trim_start_matches("gym:")),
            "{name}: {output}"
        );
        assert!(!output.contains("env steps"), "{name}: training must not start:\n{output}");
    }
}

/// Observations are normalised only where they are vectors: an Atari game's
/// frames stop `fleet run` once the bridge has said what it serves.
#[tokio::test]
async fn normalising_bridged_frames_stops_fleet_run_naming_the_env() {
    let Some(python) = python_with("fleet_envbridge, ale_py") else {
        return;
    };
    let (status, output) = fleet_run(
        &python,
        &[
            "--set",
            "env.name=gym:ALE/Pong-v5",
            "--set",
            "env.preprocess=atari",
            "--set",
            "env.normalize_observations=true",
            "--set",
            "network.torso=shallow_cnn",
        ],
    )
    .await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("env.normalize_observations") && output.contains("gym:ALE/Pong-v5") && output.contains("image frames"),
        "{output}"
    );
    assert!(!output.contains("env steps"), "training must not start:\n{output}");
}

/// `env.spec` pins what the learner's network is built for; an environment
/// with other actions stops `fleet run` before any process starts, and an
/// actor started on its own refuses it too.
#[tokio::test]
async fn a_spec_mismatch_fails_at_start_naming_both_specs() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("six-actions.toml");
    std::fs::write(
        &config,
        "[env]\nname = \"gym:CartPole-v1\"\n[env.spec]\nobservation = { vector = { size = 4 } }\naction = { discrete = { num_actions = 6 } }\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (status, output) = fleet_run(&python, &["--config", config]).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("2 discrete actions") && output.contains("6 discrete actions"),
        "{output}"
    );

    let actor = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(FLEET)
            .args(["--config", config, "--set", &bridge_command(&python)])
            .args(["actor", "--metrics-listen", "127.0.0.1:0"])
            .args(["--replay", "127.0.0.1:9", "--learner", "127.0.0.1:9"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the actor stopped within 2 minutes")
    .unwrap();
    let output = String::from_utf8_lossy(&actor.stderr);
    assert!(!actor.status.success(), "{output}");
    assert!(
        output.contains("gym:CartPole-v1") && output.contains("6 discrete actions"),
        "{output}"
    );
}

/// Kills an actor's bridge server mid-run: the actor cuts the episodes in
/// flight, restarts the server, and the run still reaches its target.
#[tokio::test]
async fn a_killed_bridge_server_is_restarted_and_training_goes_on() {
    let Some(python) = python_with("fleet_envbridge") else { return };
    let mut child = tokio::process::Command::new(FLEET)
        .arg("run")
        .args(["--set", &bridge_command(&python), "--set", "run.progress_interval_secs=1"])
        .args(["--seed", "2", "--set", "env.name=gym:CartPole-v1"])
        .args(["--target-return", "475", "--max-env-steps", "3000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run_pid = child.id().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            // Training is under way once env steps are counted (opening
            // the vectors, envpool's especially, can take seconds).
            if line.starts_with('[') && !line.contains("env steps         0 ") {
                return;
            }
        }
        panic!("fleet run ended before it took env steps:\n{seen}");
    })
    .await
    .expect("env steps within 2 minutes");
    // Both actors step (their vectors are open) before a server is killed.
    let actors: Vec<String> = seen
        .lines()
        .filter(|line| line.starts_with("actor-"))
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with("http://")))
        .map(|url| url.trim_start_matches("http://").trim_end_matches("/metrics").to_owned())
        .collect();
    assert_eq!(actors.len(), 2, "{seen}");
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let mut stepping = 0;
            for address in &actors {
                let steps = crate::support::scrape(address)
                    .await
                    .ok()
                    .and_then(|samples| crate::support::metric(&samples, "fleet_actor_env_steps_total"));
                stepping += usize::from(steps.is_some_and(|steps| steps > 0.0));
            }
            if stepping == actors.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("both actors stepping within 2 minutes");
    let servers: Vec<u32> = descendants(run_pid)
        .into_iter()
        .filter(|&pid| cmdline(pid).contains("fleet_envbridge.cli"))
        .collect();
    assert_eq!(servers.len(), 2, "one bridge server per actor");
    kill(Pid::from_raw(servers[0] as i32), Signal::SIGKILL).unwrap();

    let stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let rest = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("fleet run finished within 5 minutes");
    let logs = logs.await.unwrap();
    assert!(rest.success() && seen.contains("target reached"), "{seen}\n{logs}");
    assert!(logs.contains("env bridge lost; episodes in flight end truncated"), "{logs}");
    assert!(logs.contains("env bridge reopened"), "{logs}");
}

/// Every process below `pid`, from `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // The command name may hold spaces; the parent follows the state after the last ')'.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, parent))
        })
        .collect();
    let mut found = vec![pid];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(parents.iter().filter(|&&(_, p)| p == parent).map(|&(c, _)| c));
        index += 1;
    }
    found.split_off(1)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}
