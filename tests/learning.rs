//! Does the whole system learn? `fleet run` on CartPole-v1, seeded, with a
//! bounded step budget: it must reach the return threshold before the budget
//! runs out, and keep it while training goes on. A broken learning signal (e.g. a flipped advantage sign) leaves
//! the return near that of a random policy (≈ 20) and fails this test. And
//! on a task that needs memory, a recurrent agent with overlapping sequences
//! and stored state must solve what a feed-forward one cannot.

use std::time::Duration;

use tokio::process::Command;

use crate::support::FLEET;

/// CartPole on the default config reaches the target within the budget and
/// holds it: training goes on for 300,000 env steps past the target, and
/// the step-weighted return must not fall below 50 meanwhile. Before the
/// clipped-ratio surrogate and the one-version weights fetch, about half of
/// the seeds collapsed to an always-push-one-way policy (return ≈ 9, for
/// good in some runs) within a minute of solving. Short dips remain (the
/// lowest seen after solving is in docs/RESULTS.md), so the floor is set to
/// catch a collapse, not a dip.
#[tokio::test]
async fn cartpole_reaches_the_target_and_holds_it() {
    let (solved, output) = run(&[
        "--seed",
        "1",
        "--target-return",
        "475",
        "--max-env-steps",
        "1500000",
        "--set",
        "run.hold_env_steps=300000",
        "--set",
        "run.hold_min_return=50",
    ])
    .await;
    assert!(solved, "fleet run did not reach and hold the target:\n{output}");
    assert!(output.contains("held (lowest"), "{output}");
}

/// Pendulum-v1 with a Gaussian policy (`config/pendulum.toml`): from about
/// −1,200 (a random torque) the step-weighted return reaches −250 within the
/// budget; seeds 1–3 reach −200 at 0.5–0.8M env steps. With the policy
/// gradient's sign flipped the policy learns to spin the pole away from the
/// top and the return falls below −1,200, so the test fails.
#[tokio::test]
async fn a_gaussian_policy_learns_to_swing_the_pendulum_up() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pendulum.toml");
    let (solved, output) = run(&[
        "--config",
        config,
        "--seed",
        "1",
        "--target-return=-250",
        "--max-env-steps",
        "2000000",
    ])
    .await;
    assert!(solved, "fleet run did not swing the pendulum up:\n{output}");
}

/// `fleet run` with `args`; whether it reached its target, and its output.
async fn run(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(FLEET)
            .arg("run")
            .args(args)
            .args(["--set", "run.progress_interval_secs=1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("fleet run finished within 10 minutes")
    .unwrap();
    let output = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && output.contains("target reached"), output)
}

/// Memory Chain with the cue 4 steps before the decision (episodes of 5
/// steps) and sequences of 3 learning steps every 3 steps: no sequence holds
/// both an episode's cue and its decision, and episodes begin inside
/// sequences. The LSTM agent learns the task only from the state the actor
/// stored at each sequence's start, carried across the reset at the next
/// episode's first step; it gets ≥ 90% right within the budget. Started from
/// the zero state instead, the learner never sees a cue and a decision
/// together, and neither it nor the feed-forward agent (which can only
/// guess: mean return 0) gets to 50%.
#[tokio::test]
async fn a_recurrent_agent_solves_a_memory_task_only_from_its_stored_state() {
    let common = [
        "--seed",
        "3",
        "--set",
        "env.name=memory-chain-4",
        // The budgets below count env steps and were set with 16
        // environments per actor and batches of 8, four times the updates
        // per env step of the default's 128 and 32.
        "--set",
        "actor.num_envs=16",
        "--set",
        "learner.batch_size=8",
        "--set",
        "actor.unroll_length=3",
        "--set",
        "actor.period=3",
        "--set",
        "learner.learning_rate=0.0005",
        // Exploration matters here: without the bonus a seed can settle on
        // a wrong deterministic answer before the memory forms.
        "--set",
        "learner.entropy_cost=0.01",
        // The unit rewards this was tuned with. At the default 0.1 the
        // bonus outweighs the scaled advantages while the memory forms, and
        // 2-3 runs in 5 did not solve within 400K env steps (5 of 5 at 1,
        // in 117-183K).
        "--set",
        "learner.reward_scale=1.0",
    ];
    // No gradient links an episode's cue to its decision here, so the cue
    // survives only as far as the cell keeps it unaided: with the forget
    // gate's bias at 0 about 1/16 of it is left after 4 steps and some runs
    // (more often on a loaded machine) never found it; at 1, about 1/4.
    let lstm = [
        &common[..],
        &[
            "--set",
            "network.core=lstm",
            "--set",
            "network.lstm_size=32",
            "--set",
            "network.lstm_forget_bias=1.0",
        ],
    ]
    .concat();
    // It usually solves in 100-300K env steps; the budget leaves room for the
    // spread between runs. The negative controls get 300K.
    let (solved, output) = run(&[&lstm[..], &["--target-return", "0.9", "--max-env-steps", "800000"]].concat()).await;
    assert!(solved, "the LSTM agent did not solve memory-chain-4:\n{output}");

    let budget = ["--max-env-steps", "300000"];
    let zero_state = [
        &lstm[..],
        &budget,
        &["--target-return", "0.5", "--set", "learner.initial_state=zero"],
    ]
    .concat();
    let (solved, output) = run(&zero_state).await;
    assert!(
        !solved,
        "without the stored state no sequence links the cue to the decision, yet:\n{output}"
    );
    assert!(output.contains("env step budget exhausted"), "{output}");

    let (solved, output) = run(&[&common[..], &budget, &["--target-return", "0.5"]].concat()).await;
    assert!(!solved, "a feed-forward agent cannot remember the cue, yet:\n{output}");
    assert!(output.contains("env step budget exhausted"), "{output}");
}

/// Pixel Catch (40×20 frames, 9 steps per episode) with IMPALA's shallow
/// CNN: a random policy scores about −0.6, and the agent must catch at
/// least 90% of the balls (mean return ≥ 0.8) within the budget. The
/// step-weighted return spans the last 50,000 env steps. On a quiet machine
/// it gets there in 135,000–145,000; with two busy processes beside it, as
/// under CI's parallel tests, nine of ten runs took 121,000–315,000 and
/// one more than 400,000. The budget leaves room for that spread; an agent that
/// does not learn stays near −0.6.
#[tokio::test]
async fn a_shallow_cnn_learns_pixel_catch() {
    let (solved, output) = run(&[
        "--seed",
        "3",
        "--target-return",
        "0.8",
        "--max-env-steps",
        "800000",
        "--set",
        "env.name=catch",
        "--set",
        "network.torso=shallow_cnn",
        // The budget counts env steps and was set with the updates per env
        // step of 16 environments per actor and batches of 8.
        "--set",
        "actor.num_envs=16",
        "--set",
        "learner.batch_size=8",
        "--set",
        "actor.unroll_length=10",
        "--set",
        "learner.learning_rate=0.002",
    ])
    .await;
    assert!(solved, "the shallow CNN did not learn catch:\n{output}");
}
