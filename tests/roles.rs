//! The roles as a cluster would run them: `fleet replay`, `fleet learner` and
//! `fleet actor` as separate processes wired by address. The learner must
//! update, actors must follow its weights, and every process must expose the
//! metric names dashboards rely on.

use std::time::Duration;

use fleet_actor::metrics as actor_metrics;
use fleet_learner::metrics as learner_metrics;
use fleet_replay::metrics as replay_metrics;

use crate::support::{metric, scrape, series, start};

/// The series each role must expose, for dashboards and alerts.
fn required() -> [(&'static str, Vec<String>); 3] {
    let queue = [("table", "queue")];
    let loss = |kind| series(learner_metrics::LOSS, &[("kind", kind)]);
    [
        (
            "replay",
            vec![
                series(replay_metrics::ITEMS, &queue),
                replay_metrics::INSERTS_TOTAL.into(),
                replay_metrics::SAMPLES_TOTAL.into(),
                series(replay_metrics::BYTES, &queue),
                format!("{}_bucket", replay_metrics::SAMPLE_LATENCY),
                series(replay_metrics::HELD_SECONDS_TOTAL, &[("class", "insert")]),
                series(replay_metrics::HELD_SECONDS_TOTAL, &[("class", "sample")]),
                "process_resident_memory_bytes".into(),
            ],
        ),
        (
            "learner",
            vec![
                learner_metrics::UPDATES.into(),
                loss("policy"),
                loss("baseline"),
                loss("entropy"),
                loss("total"),
                learner_metrics::WEIGHTS_VERSION.into(),
            ],
        ),
        (
            "actor",
            vec![
                actor_metrics::ENV_STEPS.into(),
                actor_metrics::EPISODES.into(),
                format!("{}_bucket", actor_metrics::EPISODE_RETURN),
                format!("{}_bucket", actor_metrics::POLICY_LAG),
            ],
        ),
    ]
}

#[tokio::test]
async fn separate_role_processes_train_together_and_expose_their_metrics() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    // The actor starts before the learner exists: it must keep retrying and
    // connect once the learner comes up on the address it was given.
    let learner_address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let actor = start(&["actor", "--actor-id", "4", "--replay", &replay.grpc, "--learner", &learner_address]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let learner = start(&["learner", "--listen", &learner_address, "--replay", &replay.grpc]).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (learner_text, actor_text) = loop {
        let learner_text = scrape(&learner.metrics).await.unwrap();
        let actor_text = scrape(&actor.metrics).await.unwrap();
        let updates = metric(&learner_text, learner_metrics::UPDATES).unwrap_or(0.0);
        let acting_version = metric(&actor_text, actor_metrics::WEIGHTS_VERSION).unwrap_or(0.0);
        let episodes = metric(&actor_text, actor_metrics::EPISODES).unwrap_or(0.0);
        if updates >= 20.0 && acting_version > 1.0 && episodes > 0.0 {
            break (learner_text, actor_text);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no training within 60 s:\n{learner_text}\n{actor_text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let replay_text = scrape(&replay.metrics).await.unwrap();
    let required = required();
    for (role, text) in [("replay", &replay_text), ("learner", &learner_text), ("actor", &actor_text)] {
        let names = &required.iter().find(|(r, _)| *r == role).unwrap().1;
        for name in names {
            assert!(metric(text, name).is_some(), "{role} lacks {name}:\n{text}");
        }
        assert!(text.contains("# TYPE"), "{role} serves Prometheus text");
    }
    assert!(text_has_type(&actor_text, actor_metrics::EPISODE_RETURN, "histogram"));
    assert!(metric(&replay_text, replay_metrics::INSERTS_TOTAL).unwrap() > 0.0);
    for (role, text) in [("replay", &replay_text), ("learner", &learner_text), ("actor", &actor_text)] {
        crate::support::check_metrics_text(role, text).await;
    }
}

fn text_has_type(text: &str, name: &str, kind: &str) -> bool {
    text.lines().any(|l| l == format!("# TYPE {name} {kind}"))
}

#[tokio::test]
async fn a_restarted_learner_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint_dir = format!("learner.checkpoint_dir={}", dir.path().display());
    let learner_args = |listen: &str, replay: &str| {
        vec![
            "learner".to_string(),
            "--listen".into(),
            listen.into(),
            "--replay".into(),
            replay.into(),
            "--set".into(),
            checkpoint_dir.clone(),
            "--set".into(),
            "learner.checkpoint_interval_secs=0.2".into(),
        ]
    };
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let args = learner_args("127.0.0.1:0", &replay.grpc);
    let mut learner = start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let learner_address = learner.grpc.clone();
    let actor = start(&["actor", "--replay", &replay.grpc, "--learner", &learner_address]).await;

    wait_for(&learner.metrics, learner_metrics::CHECKPOINTS, 2.0).await;
    let version_before = metric(&scrape(&learner.metrics).await.unwrap(), learner_metrics::WEIGHTS_VERSION).unwrap();
    // A graceful stop writes a final checkpoint.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(learner.child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), learner.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "learner exit status {status}");

    // What the final checkpoint holds.
    let read_latest = || {
        fleet_learner::checkpoint::latest(dir.path(), &candle_core::Device::Cpu)
            .unwrap()
            .expect("the learner wrote a checkpoint")
            .meta
    };
    let saved = read_latest();
    assert!(saved.updates >= 1 && saved.version as f64 >= version_before, "{saved:?}");

    // Restarted against an empty replay the learner cannot train, so what it
    // serves is exactly what it restored: the checkpointed weights version,
    // and, in the checkpoint it writes when stopped, the same update step,
    // frames and optimiser steps.
    let empty_replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let args = learner_args("127.0.0.1:0", &empty_replay.grpc);
    let mut idle = start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let restored_version = wait_for(&idle.metrics, learner_metrics::WEIGHTS_VERSION, 1.0).await;
    assert_eq!(restored_version, saved.version as f64, "restored weights version");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(idle.child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), idle.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "idle learner exit status {status}");
    let text = scrape(&empty_replay.metrics).await.unwrap();
    assert_eq!(metric(&text, replay_metrics::SAMPLES_TOTAL).unwrap_or(0.0), 0.0, "{text}");
    assert_eq!(read_latest(), saved, "restored version, update step, frames and optimiser steps");

    // Restarted on its old address and replay, it trains on from there.
    let args = learner_args(&learner_address, &replay.grpc);
    let restarted = start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let resumed_version = wait_for(&restarted.metrics, learner_metrics::WEIGHTS_VERSION, 1.0).await;
    assert!(
        resumed_version >= saved.version as f64,
        "resumed at version {resumed_version}, had checkpointed {}",
        saved.version
    );
    // The actor reconnects by itself and acts with the resumed learner's newer weights.
    wait_for(&actor.metrics, actor_metrics::WEIGHTS_VERSION, resumed_version + 5.0).await;
    wait_for(&restarted.metrics, learner_metrics::UPDATES, 5.0).await;
}

/// Polls a metric until it reaches `at_least` (60 s at most); returns its value.
async fn wait_for(metrics: &str, name: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(metrics).await.unwrap_or_default();
        if let Some(value) = metric(&text, name).filter(|v| *v >= at_least) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not reach {at_least} within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// LASER's mix over real processes, with the shipped `config/laser.toml`:
/// each batch takes half its sequences from the queue and half from a
/// prioritised table the actors also feed, the
/// replayed half carries importance weights, and its new priorities reach
/// replay.
#[tokio::test]
async fn a_learner_mixes_fresh_and_replayed_sequences_and_sends_priorities_back() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/laser.toml");
    let replay = start(&["replay", "--listen", "127.0.0.1:0", "--config", config]).await;
    let learner = start(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.grpc, "--config", config]).await;
    let _actor = start(&["actor", "--replay", &replay.grpc, "--learner", &learner.grpc, "--config", config]).await;

    wait_for(&learner.metrics, learner_metrics::UPDATES, 20.0).await;
    wait_for(&learner.metrics, learner_metrics::PRIORITY_UPDATES, 40.0).await;
    let text = scrape(&learner.metrics).await.unwrap();
    let online = metric(&text, &series(learner_metrics::SAMPLED_SEQUENCES, &[("source", "online")])).unwrap();
    let replayed = metric(&text, &series(learner_metrics::SAMPLED_SEQUENCES, &[("source", "replay")])).unwrap();
    assert!(replayed >= 160.0, "{replayed} replayed sequences");
    // Every batch is 8 + 8; the two counters may be a batch apart when scraped.
    assert!((online - replayed).abs() <= 8.0, "online {online}, replayed {replayed}");
    let weights = metric(&text, &format!("{}_count", learner_metrics::IMPORTANCE_WEIGHTS)).unwrap();
    assert!(
        weights >= replayed - 8.0,
        "{weights} importance weights for {replayed} replayed sequences"
    );
    let beta = metric(&text, learner_metrics::BETA).unwrap();
    assert!((0.6..=1.0).contains(&beta), "beta {beta}");
    let applied = wait_for(&replay.metrics, replay_metrics::PRIORITY_UPDATES_TOTAL, 40.0).await;
    assert!(applied >= 40.0);
}
