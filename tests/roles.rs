//! The roles as a cluster would run them: `fleet replay`, `fleet learner` and
//! `fleet actor` as separate processes wired by address. The learner must
//! update, actors must follow its weights, and every process must expose the
//! metric names dashboards rely on.

use std::time::Duration;

use crate::support::{Role, metric, scrape};

const REQUIRED: &[(&str, &[&str])] = &[
    (
        "replay",
        &[
            "fleet_replay_items{table=\"queue\"}",
            "fleet_replay_inserts_total",
            "fleet_replay_samples_total",
        ],
    ),
    (
        "learner",
        &[
            "fleet_learner_updates_total",
            "fleet_learner_loss{kind=\"policy\"}",
            "fleet_learner_loss{kind=\"baseline\"}",
            "fleet_learner_loss{kind=\"entropy\"}",
            "fleet_learner_loss{kind=\"total\"}",
            "fleet_learner_weights_version",
        ],
    ),
    (
        "actor",
        &[
            "fleet_actor_env_steps_total",
            "fleet_actor_episodes_total",
            "fleet_actor_episode_return_bucket",
            "fleet_actor_policy_lag_versions_bucket",
        ],
    ),
];

#[tokio::test]
async fn separate_role_processes_train_together_and_expose_their_metrics() {
    let replay = Role::start(&["replay", "--listen", "127.0.0.1:0"]).await;
    // The actor starts before the learner exists: it must keep retrying and
    // connect once the learner comes up on the address it was given.
    let learner_address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let actor = Role::start(&["actor", "--actor-id", "4", "--replay", &replay.grpc, "--learner", &learner_address]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let learner = Role::start(&["learner", "--listen", &learner_address, "--replay", &replay.grpc]).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (learner_text, actor_text) = loop {
        let learner_text = scrape(&learner.metrics).await.unwrap();
        let actor_text = scrape(&actor.metrics).await.unwrap();
        let updates = metric(&learner_text, "fleet_learner_updates_total").unwrap_or(0.0);
        let acting_version = metric(&actor_text, "fleet_actor_weights_version").unwrap_or(0.0);
        let episodes = metric(&actor_text, "fleet_actor_episodes_total").unwrap_or(0.0);
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
    for (role, text) in [("replay", &replay_text), ("learner", &learner_text), ("actor", &actor_text)] {
        let names = REQUIRED.iter().find(|(r, _)| *r == role).unwrap().1;
        for name in names {
            assert!(metric(text, name).is_some(), "{role} lacks {name}:\n{text}");
        }
        assert!(text.contains("# TYPE"), "{role} serves Prometheus text");
    }
    assert!(text_has_type(&actor_text, "fleet_actor_episode_return", "histogram"));
    assert!(metric(&replay_text, "fleet_replay_inserts_total").unwrap() > 0.0);
}

fn text_has_type(text: &str, name: &str, kind: &str) -> bool {
    text.lines().any(|l| l == format!("# TYPE {name} {kind}"))
}
