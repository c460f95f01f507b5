//! The command line: config errors name the key, the step budget fails the
//! run with a message, and Ctrl-C stops every process cleanly.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::FLEET;

async fn fleet(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(FLEET);
    command.args(args).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("fleet finished in time")
        .unwrap()
}

#[tokio::test]
async fn config_errors_name_the_key_value_or_file() {
    let out = fleet(&["run", "--set", "learner.bogus=1"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("learner.bogus"), "{stderr}");

    let out = fleet(&["run"], &[("FLEET_ACTOR__NUM_ENVS", "0")]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("actor.num_envs"));

    let out = fleet(&["run", "--config", "/nonexistent/fleet.toml"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fleet.toml"));
}

#[tokio::test]
async fn a_bad_worker_thread_count_is_refused_by_name() {
    for bad in ["0", "many", "-2"] {
        let out = fleet(&["run"], &[("FLEET_WORKER_THREADS", bad)]).await;
        assert_eq!(out.status.code(), Some(2), "FLEET_WORKER_THREADS={bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("FLEET_WORKER_THREADS") && stderr.contains(bad), "{stderr}");
    }
    // A good count starts the runtime: the run then stops at the config error.
    let out = fleet(&["run", "--set", "learner.bogus=1"], &[("FLEET_WORKER_THREADS", "1")]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("learner.bogus") && !stderr.contains("FLEET_WORKER_THREADS"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_exhausted_step_budget_fails_with_a_message() {
    let out = fleet(
        &[
            "run",
            "--actors",
            "1",
            "--max-env-steps",
            "2000",
            "--set",
            "run.progress_interval_secs=0.5",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("budget exhausted"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("http://127.0.0.1:") && stdout.contains("/metrics"),
        "endpoints are printed: {stdout}"
    );
}

#[tokio::test]
async fn ctrl_c_stops_every_process() {
    let mut child = Command::new(FLEET)
        .args([
            "run",
            "--actors",
            "2",
            "--max-env-steps",
            "1000000000",
            "--set",
            "run.progress_interval_secs=0.5",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut endpoints = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                endpoints.push(url.trim_start_matches("http://").trim_end_matches("/metrics").to_string());
            }
            if line.starts_with('[') {
                return; // training is under way
            }
        }
        panic!("fleet run ended before its first progress line");
    })
    .await
    .expect("a progress line within 60 s");
    assert_eq!(endpoints.len(), 4, "{endpoints:?}");
    for address in &endpoints {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_ok(),
            "{address} is up while running"
        );
    }
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stopped within 30 s")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    for address in &endpoints {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "{address} still answers after Ctrl-C"
        );
    }
}

/// A role started by a launcher (`--exit-with-stdin`, stdin left open) that
/// fails exits with its error: it does not wait for the launcher to go.
#[tokio::test]
async fn a_failing_child_role_exits_while_its_launcher_lives() {
    let mut child = Command::new(FLEET)
        .args(["--set", "env.name=gym:CartPole-v1", "--set", r#"env.bridge_command=["false"]"#])
        .args(["actor", "--exit-with-stdin", "--metrics-listen", "127.0.0.1:0"])
        .args(["--replay", "127.0.0.1:9", "--learner", "127.0.0.1:9"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the failed actor exited within 30 s although its stdin is open")
        .unwrap();
    assert_eq!(status.code(), Some(2));
}
