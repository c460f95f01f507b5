//! `fleet eval`: a seeded CartPole run trained to its target plays back in
//! one process at the return it was trained to; `--record` writes a GIF of
//! whole episodes that decodes to the frames played; and bad input (a
//! missing run folder, a missing or damaged policy, another env's policy,
//! a recording of an env with nothing to draw) is an error naming the file
//! or the env, never a panic. A Gaussian policy's Pendulum-v1 episode is
//! recorded as Gymnasium draws the pendulum.

use std::path::{Path, PathBuf};

use candle_core::Device;
use fleet_agent::{ActionSpec, ActorCritic, EnvSpec, NetworkConfig, Weights};
use fleet_trajectory::ObservationSpec;

use crate::support::{fleet_output, run_checking_lines};

/// `fleet eval` with `args`: its exit code, stdout and stderr.
async fn eval<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> (Option<i32>, String, String) {
    let mut all: Vec<std::ffi::OsString> = vec!["eval".into()];
    all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    let out = fleet_output(all).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out.status.code(), stdout, stderr)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn numbers(report: &serde_json::Value, key: &str) -> Vec<f64> {
    report[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// The frames of a GIF as RGBA, and its size.
fn decode_gif(path: &Path) -> (u16, u16, Vec<Vec<u8>>) {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(std::fs::File::open(path).unwrap()).unwrap();
    let (width, height) = (decoder.width(), decoder.height());
    // One palette for the whole GIF, as every decoder reads it.
    assert!(decoder.global_palette().is_some_and(|p| p.len() >= 4 * 3));
    let mut frames = Vec::new();
    while let Some(frame) = decoder.read_next_frame().unwrap() {
        assert_eq!((frame.width, frame.height), (width, height), "every frame fills the picture");
        assert!(frame.palette.is_none(), "drawn frames share the global palette");
        frames.push(frame.buffer.to_vec());
    }
    (width, height, frames)
}

fn count_colour(frame: &[u8], rgb: [u8; 3]) -> usize {
    frame.chunks_exact(4).filter(|p| p[..3] == rgb).count()
}

/// CartPole trained to a step-weighted return of 475, then played greedily
/// from its run folder. The run's return is of sampled actions over its
/// last 50,000 env steps, so its final policy alone is not bound to 475:
/// in eight runs like this one, the greedy mean of 8 episodes was 500 in
/// six and 483 and 468 in the others (sampled, of 4 episodes: 500, or 457
/// and 444). The floors, 400 and 300, are far above what an untrained
/// policy gets (about 10 greedily, 20 sampled; the control below).
/// Recorded, each episode is one frame per observation of Gymnasium's
/// 600×400 picture, with the pole drawn and the cart moving.
#[tokio::test]
async fn a_trained_cartpole_policy_plays_at_its_target_and_records_a_gif() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--seed",
        "1",
        "--target-return",
        "475",
        "--max-env-steps",
        "1500000",
        "--run-dir",
        dir.path().to_str().unwrap(),
        "--name",
        "solved",
    ]
    .map(String::from)
    .to_vec();
    let (solved, output) = run_checking_lines(&args, |_, _| {}).await;
    assert!(solved, "fleet run did not reach its target:\n{output}");
    let folder = dir.path().join("solved");

    let json = dir.path().join("greedy.json");
    let (code, stdout, stderr) = eval([
        folder.as_os_str(),
        "--greedy".as_ref(),
        "--episodes".as_ref(),
        "8".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = read_json(&json);
    let (returns, lengths) = (numbers(&report, "returns"), numbers(&report, "lengths"));
    assert_eq!(returns.len(), 8, "{report}");
    assert_eq!(returns, lengths, "CartPole pays 1 per step: {report}");
    let mean = report["return"]["mean"].as_f64().unwrap();
    assert!(
        mean >= 400.0,
        "greedy return {mean} far below the target the run reached:\n{stdout}"
    );
    assert_eq!(mean, returns.iter().sum::<f64>() / 8.0);
    assert_eq!(
        report["return"]["min"].as_f64().unwrap(),
        returns.iter().copied().fold(f64::MAX, f64::min)
    );
    assert_eq!(report["greedy"], true);
    assert_eq!(
        report["policy"].as_str().unwrap(),
        folder.join("policy.safetensors").to_str().unwrap()
    );
    assert!(
        stdout.contains("played    8 episodes of CartPole-v1 (greedy actions") && stdout.contains(&format!("return    {mean:.1} ± ")),
        "{stdout}"
    );

    // Sampled actions, the default: the trained policy still balances.
    let json = dir.path().join("sampled.json");
    let (code, stdout, stderr) = eval([
        folder.as_os_str(),
        "--episodes".as_ref(),
        "4".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = read_json(&json);
    assert_eq!(report["greedy"], false);
    assert!(report["return"]["mean"].as_f64().unwrap() >= 300.0, "{report}");

    // Two episodes recorded.
    let gif_path = dir.path().join("cartpole.gif");
    let json = dir.path().join("recorded.json");
    let (code, stdout, stderr) = eval([
        folder.as_os_str(),
        "--greedy".as_ref(),
        "--episodes".as_ref(),
        "3".as_ref(),
        "--record".as_ref(),
        gif_path.as_os_str(),
        "--record-episodes".as_ref(),
        "2".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--seed".as_ref(),
        "5".as_ref(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = read_json(&json);
    let lengths = numbers(&report, "lengths");
    assert_eq!(report["seed"], 5);
    let (width, height, frames) = decode_gif(&gif_path);
    assert_eq!((width, height), (600, 400));
    // An episode of N actions has N + 1 observations, each a frame.
    let expected = (lengths[0] + 1.0 + lengths[1] + 1.0) as usize;
    assert_eq!(frames.len(), expected, "{report}");
    assert_eq!(report["recording"]["frames"].as_u64(), Some(expected as u64));
    assert!(
        stdout.contains(&format!("recorded  2 episodes, {expected} frames of 600×400 in")),
        "{stdout}"
    );
    for (i, frame) in frames.iter().enumerate() {
        // White ground, the black cart and track, a pole of at least
        // 10 × 100 px: a picture, not a blank.
        assert!(count_colour(frame, [255, 255, 255]) > 200_000, "frame {i}");
        assert!(count_colour(frame, [0, 0, 0]) >= 1500, "frame {i}");
        assert!(count_colour(frame, [202, 152, 101]) >= 1000, "frame {i}");
    }
    let first = &frames[0];
    assert!(frames.iter().any(|frame| frame != first), "the cart and pole move over an episode");
}

/// A run folder `name` under `dir` holding `config` and, if given, `policy`.
fn run_folder(dir: &Path, name: &str, config: &str, policy: Option<&[u8]>) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.toml"), config).unwrap();
    if let Some(policy) = policy {
        std::fs::write(folder.join("policy.safetensors"), policy).unwrap();
    }
    folder
}

/// Untrained weights of the default network for `spec`.
fn untrained_policy(spec: EnvSpec) -> Vec<u8> {
    let network = ActorCritic::new(spec, &NetworkConfig::default(), 11, &Device::Cpu).unwrap();
    Weights::from_network(&network, 1).unwrap().bytes.to_vec()
}

/// An untrained Gaussian policy's Pendulum-v1 episode, recorded: 201
/// frames of Gymnasium's 500×500 picture of the rod, which swings.
#[tokio::test]
async fn a_pendulum_episode_records_a_gif_of_the_rod() {
    let dir = tempfile::tempdir().unwrap();
    let spec = EnvSpec {
        observation: ObservationSpec::Vector { size: 3 },
        action: ActionSpec::Continuous { dims: 1 },
    };
    let folder = run_folder(
        dir.path(),
        "pendulum",
        "[env]\nname = \"Pendulum-v1\"\n",
        Some(&untrained_policy(spec)),
    );
    let gif_path = dir.path().join("pendulum.gif");
    let (code, stdout, stderr) = eval([
        folder.as_os_str(),
        "--episodes".as_ref(),
        "1".as_ref(),
        "--record".as_ref(),
        gif_path.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("recorded  1 episode, 201 frames of 500×500 in"), "{stdout}");
    let (width, height, frames) = decode_gif(&gif_path);
    assert_eq!((width, height, frames.len()), (500, 500, 201));
    for (i, frame) in frames.iter().enumerate() {
        // The rod, 114 × 23 px with round ends, and the black axle.
        assert!(count_colour(frame, [204, 77, 77]) >= 2000, "frame {i}");
        assert!(count_colour(frame, [0, 0, 0]) >= 50, "frame {i}");
    }
    assert!(frames.windows(2).filter(|pair| pair[0] != pair[1]).count() > 150, "the rod swings");
}

/// An error exit (2, not a panic's 101) whose message contains every one of `parts`.
fn assert_error(result: &(Option<i32>, String, String), parts: &[&str]) {
    let (code, stdout, stderr) = result;
    assert_eq!(*code, Some(2), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for part in parts {
        assert!(stderr.contains(part), "`{part}` not in: {stderr}");
    }
}

#[tokio::test]
async fn bad_input_is_an_error_naming_the_file_or_env() {
    let dir = tempfile::tempdir().unwrap();
    let cartpole = untrained_policy(EnvSpec::vector(4, 2));
    let cartpole_config = "seed = 3\n[env]\nname = \"CartPole-v1\"\n";

    // The control: an untrained policy plays, and plays badly (which the
    // trained one above must beat).
    let good = run_folder(dir.path(), "untrained", cartpole_config, Some(&cartpole));
    let json = dir.path().join("untrained.json");
    let (code, stdout, stderr) = eval([
        good.as_os_str(),
        "--episodes".as_ref(),
        "6".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = read_json(&json);
    assert_eq!((report["episodes"].as_u64(), report["policy_version"].as_u64()), (Some(6), Some(1)));
    assert!(report["return"]["mean"].as_f64().unwrap() < 100.0, "{report}");
    assert!(report["recording"].is_null(), "{report}");

    let missing = dir.path().join("no-such-run");
    assert_error(
        &eval([missing.as_os_str()]).await,
        &[&format!("run folder {} does not exist", missing.display())],
    );

    let no_policy = run_folder(dir.path(), "no-policy", cartpole_config, None);
    let file = no_policy.join("policy.safetensors");
    assert_error(&eval([no_policy.as_os_str()]).await, &[&format!("{} is missing", file.display())]);
    let elsewhere = dir.path().join("elsewhere.safetensors");
    assert_error(
        &eval([no_policy.as_os_str(), "--policy".as_ref(), elsewhere.as_os_str()]).await,
        &[&format!("{} is missing", elsewhere.display())],
    );

    let damaged = run_folder(
        dir.path(),
        "damaged",
        cartpole_config,
        Some(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"),
    );
    let file = damaged.join("policy.safetensors");
    assert_error(
        &eval([damaged.as_os_str()]).await,
        &[&format!("{} is not a weights file", file.display())],
    );
    // Cut short: a valid header whose tensors are not all there.
    let cut = run_folder(dir.path(), "cut", cartpole_config, Some(&cartpole[..cartpole.len() - 100]));
    assert_error(
        &eval([cut.as_os_str()]).await,
        &[&cut.join("policy.safetensors").display().to_string()],
    );

    // CartPole's weights in a run of cartpole-masked (2 observations, not 4).
    let other_env = run_folder(dir.path(), "other-env", "[env]\nname = \"cartpole-masked\"\n", Some(&cartpole));
    let file = other_env.join("policy.safetensors");
    assert_error(
        &eval([other_env.as_os_str()]).await,
        &[
            &format!("{} does not fit the network that", file.display()),
            "env `cartpole-masked`",
            "policy_tower.0.weight",
            "has shape [64, 4], the network expects [64, 2]",
        ],
    );
    // And the same file given with --policy, to a run of catch.
    let catch = run_folder(
        dir.path(),
        "catch",
        "[env]\nname = \"catch\"\n[network]\ntorso = \"shallow_cnn\"\n",
        None,
    );
    assert_error(
        &eval([catch.as_os_str(), "--policy".as_ref(), good.join("policy.safetensors").as_os_str()]).await,
        &[
            &format!("{} does not fit", good.join("policy.safetensors").display()),
            "env `catch`",
        ],
    );

    let memory = run_folder(dir.path(), "memory", "[env]\nname = \"memory-chain-4\"\n", Some(&cartpole));
    let gif = dir.path().join("memory.gif");
    assert_error(
        &eval([memory.as_os_str(), "--record".as_ref(), gif.as_os_str()]).await,
        &["env `memory-chain-4` has no frames to record"],
    );
    assert!(!gif.exists());

    let broken_config = run_folder(dir.path(), "broken-config", "[env]\nnane = \"x\"\n", Some(&cartpole));
    assert_error(
        &eval([broken_config.as_os_str()]).await,
        &[&broken_config.join("config.toml").display().to_string(), "env.nane"],
    );

    assert_error(
        &eval([
            good.as_os_str(),
            "--episodes".as_ref(),
            "2".as_ref(),
            "--record".as_ref(),
            gif.as_os_str(),
            "--record-episodes".as_ref(),
            "3".as_ref(),
        ])
        .await,
        &["--record-episodes 3 must be between 1 and --episodes (2)"],
    );
    assert_error(
        &eval([good.as_os_str(), "--episodes".as_ref(), "0".as_ref()]).await,
        &["--episodes must be at least 1"],
    );
}
