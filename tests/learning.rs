//! Does the whole system learn? `fleet run` on CartPole-v1, seeded, with a
//! bounded step budget: it must reach the return threshold before the budget
//! runs out. A broken learning signal (e.g. a flipped advantage sign) leaves
//! the return near that of a random policy (≈ 20) and fails this test.

use std::time::Duration;

use tokio::process::Command;

use crate::support::FLEET;

#[tokio::test]
async fn cartpole_reaches_the_threshold_within_the_step_budget() {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(FLEET)
            .args([
                "run",
                "--seed",
                "1",
                "--actors",
                "2",
                "--target-return",
                "400",
                "--max-env-steps",
                "1500000",
            ])
            .args(["--set", "run.progress_interval_secs=1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("fleet run finished within 10 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fleet run did not reach the target:\n{stdout}\n{stderr}");
    assert!(stdout.contains("target reached"), "{stdout}");
}
