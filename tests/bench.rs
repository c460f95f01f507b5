//! `fleet bench e2e`: a brief run of the whole system prints a table row
//! with a positive env step rate and the peak memory of every process.

use std::time::Duration;

use tokio::process::Command;

use crate::support::FLEET;

#[tokio::test]
async fn the_end_to_end_bench_measures_a_running_fleet() {
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        Command::new(FLEET)
            .args([
                "bench",
                "e2e",
                "--seconds",
                "2",
                "--warmup",
                "0",
                "--actors",
                "1",
                "--cores",
                "none",
            ])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the bench finished within 4 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = stdout
        .lines()
        .find(|line| line.starts_with("| none | 1 |"))
        .unwrap_or_else(|| panic!("a row for one feed-forward actor in\n{stdout}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    let steps_per_second: f64 = cells[2].parse().unwrap_or_else(|_| panic!("env steps/s in `{row}`"));
    assert!(steps_per_second > 0.0, "{row}");
    // Peak RSS of the launcher, replay, learner and the one actor, in MiB.
    for (cell, process) in cells[5..9].iter().zip(["launcher", "replay", "learner", "actor"]) {
        let mib: f64 = cell.parse().unwrap_or_else(|_| panic!("{process} peak RSS in `{row}`"));
        assert!(mib > 0.0, "{process}: {row}");
    }
}
