//! `fleet export --format torch`: the PyTorch module it writes computes what
//! fleet's own network computes. For the CartPole MLP, IMPALA's shallow CNN
//! on 84×84×4 Atari frames, the deep ResNet on stacked Catch frames, the
//! LSTM agent (for it, sequences with an episode starting in the middle and
//! a carried state) and Gaussian policies of both kinds of log deviation, a
//! network with perturbed weights (no zero bias left) is saved as a run
//! folder's policy, exported by the binary, and run by fleet and by torch on
//! the same observations; the policy's outputs (logits, or means then
//! clamped log deviations), values and the LSTM's state agree to 1e-5
//! (relative above 1), and the feed-forward networks' greedy actions are
//! those `fleet eval --greedy` takes (and, continuous, mapped into the
//! environment's bounds as fleet maps them). A changed bias makes the check
//! fail, so it can. The Python with torch and safetensors is
//! `FLEET_TORCH_PYTHON` (default `python3`); these tests skip, with the
//! reason, when it lacks them, and `FLEET_REQUIRE_TORCH=1` (CI) makes that
//! a failure. Errors of `fleet export` name the file at fault, torch or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use fleet::config::{Config, ConfigSources};
use fleet::runs::RunFolder;
use fleet_actor::env::pendulum;
use fleet_agent::{ActionSpec, Actions, ActorCritic, EnvSpec, FrameShape, RecurrentState, Weights};
use fleet_trajectory::{ActionBounds, ObservationSpec};
use rand::{Rng, SeedableRng};

use crate::support::FLEET;

/// Loads an export and compares its outputs with fleet's, both from a
/// safetensors file of observations and expected outputs. Feed-forward
/// networks are called as `model(obs)`; recurrent ones through `unroll`
/// over the whole sequence and through `forward` step by step, from the
/// stored state. Where the data has them, the greedy actions of
/// `model.act` and those in the environment's units of `model.env_action`
/// (with the bounds the data gives, else the export's) are compared too.
/// Exits 1 naming the output that differs.
const CHECK: &str = r#"
import sys
import torch
from safetensors.torch import load_file

export_dir, data_path = sys.argv[1], sys.argv[2]
sys.path.insert(0, export_dir)
import fleet_torch

torch.manual_seed(0)
model = fleet_torch.load(export_dir)
assert isinstance(model, torch.nn.Module)
data = load_file(data_path)
outputs = {}
with torch.no_grad():
    if "is_first" in data:
        obs, is_first = data["obs"], data["is_first"]
        state = (data["h0"], data["c0"])
        logits, values, (h, c) = model.unroll(obs, is_first, state)
        outputs.update(logits=logits, values=values, h=h, c=c)
        steps = []
        for t in range(obs.shape[0]):
            step_logits, step_values, state = model(obs[t], is_first[t], state)
            steps.append((step_logits, step_values))
        outputs["stepped_logits"] = torch.stack([s[0] for s in steps])
        outputs["stepped_values"] = torch.stack([s[1] for s in steps])
        outputs["stepped_h"], outputs["stepped_c"] = state
    else:
        logits, values = model(data["obs"])
        outputs.update(logits=logits, values=values)
        if "expected_greedy" in data:
            outputs["greedy"] = model.act(data["obs"])
            assert torch.equal(model.greedy_action(logits), outputs["greedy"])
        if "expected_env_action" in data:
            outputs["env_action"] = model.env_action(outputs["greedy"], data.get("low"), data.get("high"))

worst = 0.0
failed = []
for name, got in outputs.items():
    expected = data["expected_" + name.removeprefix("stepped_")]
    if got.shape != expected.shape or got.dtype != expected.dtype:
        failed.append(f"{name}: {got.dtype} {tuple(got.shape)}, fleet's {expected.dtype} {tuple(expected.shape)}")
        continue
    got, expected = got.double(), expected.double()
    excess = (got - expected).abs() / expected.abs().clamp(min=1.0)
    worst = max(worst, excess.max().item())
    if excess.max().item() > 1e-5:
        i = int(excess.flatten().argmax())
        failed.append(
            f"{name}: differs by {excess.max().item():.3g} (relative above 1) at {i}: "
            f"torch {got.flatten()[i].item()!r}, fleet {expected.flatten()[i].item()!r}"
        )
spread = data["expected_logits"].std().item()
if failed:
    print("\n".join(failed))
    sys.exit(1)
print(f"parity ok: worst difference {worst:.3g}, logits spread {spread:.3g}")
"#;

/// `FLEET_TORCH_PYTHON` if it can import torch and safetensors; `None` (a
/// printed skip) if not, unless `FLEET_REQUIRE_TORCH=1`.
fn torch_python() -> Option<String> {
    crate::support::python_from(
        "FLEET_TORCH_PYTHON",
        "FLEET_REQUIRE_TORCH",
        "torch, safetensors",
        "pip install torch safetensors",
    )
}

fn load_config(file: Option<&str>, overrides: &[&str]) -> Config {
    Config::load(&ConfigSources {
        file: file.map(|f| Path::new(env!("CARGO_MANIFEST_DIR")).join(f)),
        env: Vec::new(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap()
}

/// The config's network for `spec`, every parameter moved by up to ±0.1 so
/// that no bias is zero and the policy head's logits spread out.
fn perturbed_network(config: &Config, spec: EnvSpec, seed: u64) -> ActorCritic {
    let net = ActorCritic::new(spec, &config.network, seed, &Device::Cpu).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (_, var) in net.params() {
        let noise: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(-0.1..0.1)).collect();
        let noise = Tensor::from_vec(noise, var.dims(), &Device::Cpu).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    net
}

/// A run folder as `fleet run` leaves it: the effective config and the
/// learner's weights as the policy file.
fn run_folder(parent: &Path, config: &Config, net: &ActorCritic) -> PathBuf {
    let folder = RunFolder::create(parent, Some("run"), std::time::SystemTime::now()).unwrap();
    folder.write_config(config).unwrap();
    folder.write_policy(&Weights::from_network(net, 17).unwrap().bytes).unwrap();
    folder.path
}

fn fleet_export(run: &Path, out: &Path) -> Output {
    Command::new(FLEET)
        .arg("export")
        .arg(run)
        .args(["--format", "torch", "-o"])
        .arg(out)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Exports the run, checks what `fleet export` printed, and returns the
/// export folder.
fn export(run: &Path) -> PathBuf {
    let out = run.parent().unwrap().join("torch");
    let output = fleet_export(run, &out);
    let printed = text(&output);
    assert!(output.status.success(), "fleet export failed:\n{printed}");
    assert!(printed.contains("fleet_torch.load("), "{printed}");
    assert!(printed.contains("weights version 17"), "{printed}");
    for file in ["fleet_torch.py", "architecture.json", "policy.safetensors"] {
        assert!(out.join(file).is_file(), "{file} in the export:\n{printed}");
    }
    out
}

/// Runs the check on an export and the data file; its combined output and
/// whether it passed.
fn check(python: &str, export: &Path, data: &Path) -> (bool, String) {
    let script = export.parent().unwrap().join("check.py");
    std::fs::write(&script, CHECK).unwrap();
    let output = Command::new(python).arg(&script).arg(export).arg(data).output().unwrap();
    (output.status.success(), text(&output))
}

fn assert_parity(python: &str, export: &Path, data: &Path) {
    let (passed, report) = check(python, export, data);
    assert!(passed && report.contains("parity ok"), "torch disagrees with fleet:\n{report}");
    eprintln!("{}: {}", export.display(), report.trim());
}

/// `n` observations of `spec`, f32 vectors in ±2 or u8 frames, as fleet's
/// network reads them (`[n, size]` f32) and as torch gets them (`[n,
/// *shape]`, u8 for frames).
fn observations(spec: EnvSpec, n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let size = spec.observation_size();
    let mut shape = vec![n];
    shape.extend(spec.observation.shape());
    match spec.frame() {
        None => {
            let v: Vec<f32> = (0..n * size).map(|_| rng.random_range(-2.0..2.0)).collect();
            let flat = Tensor::from_vec(v, (n, size), &Device::Cpu).unwrap();
            (flat.clone(), flat.reshape(shape).unwrap())
        }
        Some(_) => {
            let v: Vec<u8> = (0..n * size).map(|_| rng.random()).collect();
            let frames = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
            (frames.flatten_from(1).unwrap().to_dtype(DType::F32).unwrap(), frames)
        }
    }
}

fn save(path: &Path, tensors: Vec<(&str, Tensor)>) {
    let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

/// The actions `fleet eval --greedy` takes for the policy's outputs
/// `logits` `[n, W]`, as it hands them to the environment: i64 indices
/// `[n]`, or normalised values `[n, dims]`.
fn greedy_actions(net: &ActorCritic, logits: &Tensor) -> Tensor {
    let distribution = net.distribution();
    let n = logits.dim(0).unwrap();
    let (mut actions, mut env) = (Actions::empty(net.spec().action), Actions::empty(net.spec().action));
    distribution.greedy(&logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &mut actions);
    match distribution.env_actions(&actions, &mut env).clone() {
        Actions::Discrete(indices) => Tensor::from_vec(indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), n, &Device::Cpu),
        Actions::Continuous { dims, values } => Tensor::from_vec(values, (n, dims), &Device::Cpu),
    }
    .unwrap()
}

/// How the continuous actions of a parity check reach the environment.
enum EnvBounds<'a> {
    /// As the export records them.
    Recorded(&'a ActionBounds),
    /// Given to `env_action` by the caller (the export has none).
    Given(&'a ActionBounds),
}

/// `net`'s parity, saved with `config` as a run's policy under `dir`, on a
/// batch of `n` observations: outputs, values and greedy actions, and with
/// `bounds` the actions in the environment's units. Returns the export and
/// fleet's policy outputs, or `None` without torch.
fn network_parity(dir: &Path, config: &Config, net: &ActorCritic, n: usize, bounds: Option<EnvBounds>) -> Option<(PathBuf, Tensor)> {
    let python = torch_python()?;
    let run = run_folder(dir, config, net);
    let export = export(&run);
    let (flat, obs) = observations(net.spec(), n, 4);
    let out = net.forward(&flat).unwrap();
    let greedy = greedy_actions(net, &out.logits);
    let mut tensors = vec![
        ("obs", obs),
        ("expected_logits", out.logits.clone()),
        ("expected_values", out.values),
        ("expected_greedy", greedy.clone()),
    ];
    if let Some(EnvBounds::Recorded(bounds) | EnvBounds::Given(bounds)) = &bounds {
        let mut env = Vec::new();
        bounds.to_env(&greedy.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &mut env);
        tensors.push(("expected_env_action", Tensor::from_vec(env, greedy.dims(), &Device::Cpu).unwrap()));
    }
    if let Some(EnvBounds::Given(bounds)) = &bounds {
        let dims = bounds.dims();
        tensors.push(("low", Tensor::from_vec(bounds.low.clone(), dims, &Device::Cpu).unwrap()));
        tensors.push(("high", Tensor::from_vec(bounds.high.clone(), dims, &Device::Cpu).unwrap()));
    }
    let data = dir.join("data.safetensors");
    save(&data, tensors);
    assert_parity(&python, &export, &data);
    Some((export, out.logits))
}

/// A feed-forward network's parity on a batch of `n` observations.
fn feed_forward_parity(config: &Config, spec: EnvSpec, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    network_parity(dir.path(), config, &perturbed_network(config, spec, 3), n, None);
}

#[test]
fn the_torch_export_of_the_cartpole_mlp_computes_fleets_outputs_and_the_check_can_fail() {
    let config = load_config(None, &[]);
    let spec = EnvSpec::vector(4, 2);
    feed_forward_parity(&config, spec, 32);

    // The same check on an export whose value bias is off by 0.01 fails,
    // naming the values.
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let net = perturbed_network(&config, spec, 3);
    let run = run_folder(dir.path(), &config, &net);
    let export = export(&run);
    let written = architecture(&export);
    assert_eq!(written["format_version"], 2);
    assert_eq!(written["action"], serde_json::json!({ "kind": "discrete", "num_actions": 2 }));
    let (flat, obs) = observations(spec, 8, 4);
    let out = net.forward(&flat).unwrap();
    let data = dir.path().join("data.safetensors");
    save(
        &data,
        vec![("obs", obs), ("expected_logits", out.logits), ("expected_values", out.values)],
    );
    let (_, bias) = net.params().iter().find(|(name, _)| name == "value.bias").unwrap();
    bias.set(&(bias.as_tensor() + 0.01).unwrap()).unwrap();
    std::fs::write(export.join("policy.safetensors"), Weights::from_network(&net, 17).unwrap().bytes).unwrap();
    let (passed, report) = check(&python, &export, &data);
    assert!(!passed && report.contains("values: differs"), "{report}");
}

#[test]
fn the_torch_export_of_the_atari_torsos_computes_fleets_outputs() {
    // An Atari run's config records no spec: the export derives 4×84×84
    // from [env.atari] and the 6 actions from the policy head.
    let frame = FrameShape {
        channels: 4,
        height: 84,
        width: 84,
    };
    for torso in ["network.torso=shallow_cnn", "network.torso=nature_cnn"] {
        let config = load_config(Some("config/atari.toml"), &[torso]);
        feed_forward_parity(&config, EnvSpec::frames(frame, 6), 8);
    }
}

#[test]
fn the_torch_export_of_the_deep_resnet_on_stacked_catch_frames_computes_fleets_outputs() {
    // 40×20 frames pool to 20×10, 10×5, 5×3: odd sizes on the way.
    let config = load_config(None, &["env.name=catch", "env.frame_stack=2", "network.torso=deep_resnet"]);
    let frame = FrameShape {
        channels: 2,
        height: 40,
        width: 20,
    };
    feed_forward_parity(&config, EnvSpec::frames(frame, 3), 6);
}

#[test]
fn the_torch_export_of_the_small_cnn_on_catch_frames_computes_fleets_outputs() {
    let config = load_config(None, &["env.name=catch", "network.torso=small_cnn"]);
    let frame = FrameShape {
        channels: 1,
        height: 40,
        width: 20,
    };
    feed_forward_parity(&config, EnvSpec::frames(frame, 3), 6);
}

/// Sets the parameter `name` of `net` to `values`.
fn set_param(net: &ActorCritic, name: &str, values: &[f32]) {
    let (_, var) = net.params().iter().find(|(n, _)| n == name).unwrap();
    var.set(&Tensor::from_vec(values.to_vec(), var.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

fn architecture(export: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(export.join("architecture.json")).unwrap()).unwrap()
}

/// A Gaussian policy whose log deviations are the parameter
/// `policy.log_std`, for a bridged environment with 3 action dimensions
/// (whose bounds the export cannot know: the caller gives them). Two of
/// the deviations lie beyond the range and are clamped to its ends, and
/// the first mean lies beyond 1, where mapping it into the bounds clips it.
#[test]
fn the_torch_export_of_a_gaussian_policy_with_a_log_std_parameter_computes_fleets_outputs_and_actions() {
    let mut config = load_config(None, &["env.name=gym:Reacher-v5", "network.log_std=parameter"]);
    let spec = EnvSpec {
        observation: ObservationSpec::Vector { size: 5 },
        action: ActionSpec::Continuous { dims: 3 },
    };
    config.env.spec = Some(spec);
    let net = perturbed_network(&config, spec, 8);
    set_param(&net, "policy.log_std", &[3.0, -6.0, -0.7]);
    set_param(&net, "policy.bias", &[1.5, -0.2, 0.05]);
    let bounds = ActionBounds {
        low: vec![-2.0, 0.0, -1.0],
        high: vec![2.0, 1.0, 3.0],
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((export, params)) = network_parity(dir.path(), &config, &net, 16, Some(EnvBounds::Given(&bounds))) else {
        return;
    };
    let rows = params.to_vec2::<f32>().unwrap();
    assert!(rows.iter().all(|row| row[3..] == [2.0, -5.0, -0.7]), "{rows:?}");
    assert!(rows.iter().any(|row| row[0] > 1.0), "a mean to clip: {rows:?}");
    assert_eq!(
        architecture(&export)["action"],
        serde_json::json!({
            "kind": "continuous", "dims": 3, "log_std": "parameter", "log_std_range": [-5.0, 2.0],
            "squash": false, "bounds": null
        })
    );
}

/// A squashed Gaussian policy for Pendulum-v1 whose log deviations are the
/// head's second half of outputs, some of them beyond the range's top: its
/// greedy actions are tanh of the means, and the export records the
/// pendulum's torque bounds, [-2, 2], which `env_action` maps them into.
#[test]
fn the_torch_export_of_a_squashed_gaussian_policy_with_state_dependent_log_stds_computes_fleets_outputs_and_actions() {
    let config = load_config(
        Some("config/pendulum.toml"),
        &["network.log_std=state_dependent", "network.squash=true"],
    );
    let spec = EnvSpec {
        observation: ObservationSpec::Vector { size: 3 },
        action: ActionSpec::Continuous { dims: 1 },
    };
    let net = perturbed_network(&config, spec, 9);
    // The log deviation's output straddles the range's top, 2.
    set_param(&net, "policy.bias", &[0.3, 2.0]);
    let bounds = fleet_actor::env::make(pendulum::NAME, 0).unwrap().action_bounds().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some((export, params)) = network_parity(dir.path(), &config, &net, 32, Some(EnvBounds::Recorded(&bounds))) else {
        return;
    };
    let log_stds: Vec<f32> = params.to_vec2::<f32>().unwrap().iter().map(|row| row[1]).collect();
    assert!(
        log_stds.contains(&2.0) && log_stds.iter().any(|&l| l < 2.0) && log_stds.iter().all(|&l| l <= 2.0),
        "{log_stds:?}"
    );
    assert_eq!(
        architecture(&export)["action"],
        serde_json::json!({
            "kind": "continuous", "dims": 1, "log_std": "state_dependent", "log_std_range": [-5.0, 2.0],
            "squash": true, "bounds": { "low": [-2.0], "high": [2.0] }
        })
    );
    let printed = text(&fleet_export(&dir.path().join("run"), &dir.path().join("again")));
    assert!(
        printed.contains("params, value = model(obs)")
            && printed.contains("action = model.act(obs)")
            && printed.contains("tanh of the means"),
        "{printed}"
    );
    assert!(printed.contains("low [-2.0] high [2.0]"), "the bounds: {printed}");
}

/// The LSTM agent of config/cartpole-masked.toml over `T` steps of `B`
/// sequences from a carried state, one of them starting an episode midway.
#[test]
fn the_torch_export_of_the_lstm_agent_computes_fleets_outputs_and_state_across_a_reset() {
    let Some(python) = torch_python() else {
        return;
    };
    let config = load_config(Some("config/cartpole-masked.toml"), &[]);
    let spec = EnvSpec::vector(2, 2);
    let dir = tempfile::tempdir().unwrap();
    let net = perturbed_network(&config, spec, 5);
    let run = run_folder(dir.path(), &config, &net);
    let export = export(&run);

    let (steps, b) = (8, 3);
    let (flat, _) = observations(spec, steps * b, 6);
    let mut first = vec![0f32; steps * b];
    first[4 * b + 1] = 1.0; // sequence 1: a new episode at step 4
    first[b + 2] = 1.0; // sequence 2: at step 1
    let is_first = Tensor::from_vec(first, steps * b, &Device::Cpu).unwrap();
    let size = net.state_size();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut random_state = || {
        let v: Vec<f32> = (0..b * size).map(|_| rng.random_range(-0.5..0.5)).collect();
        Tensor::from_vec(v, (b, size), &Device::Cpu).unwrap()
    };
    let start = RecurrentState {
        h: random_state(),
        c: random_state(),
    };
    let (out, end) = net.unroll(&flat, &is_first, steps, &start).unwrap();
    let data = dir.path().join("data.safetensors");
    save(
        &data,
        vec![
            ("obs", flat.reshape((steps, b, 2)).unwrap()),
            ("is_first", is_first.reshape((steps, b)).unwrap()),
            ("h0", start.h),
            ("c0", start.c),
            ("expected_logits", out.logits.reshape((steps, b, 2)).unwrap()),
            ("expected_values", out.values.reshape((steps, b)).unwrap()),
            ("expected_h", end.h),
            ("expected_c", end.c),
        ],
    );
    assert_parity(&python, &export, &data);
    let printed = text(&fleet_export(&run, &dir.path().join("again")));
    assert!(
        printed.contains("normalize_observations"),
        "the export says the inputs are normalised:\n{printed}"
    );
}

#[test]
fn fleet_export_names_the_file_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("no-such-run");
    let printed = text(&fleet_export(&missing, &out));
    assert!(
        printed.contains(&missing.display().to_string()) && printed.contains("does not exist"),
        "{printed}"
    );

    let config = load_config(None, &[]);
    let net = perturbed_network(&config, EnvSpec::vector(4, 2), 1);
    let run = run_folder(dir.path(), &config, &net);
    let policy = run.join("policy.safetensors");

    std::fs::write(&policy, b"not safetensors").unwrap();
    let output = fleet_export(&run, &out);
    let printed = text(&output);
    assert!(
        !output.status.success() && printed.contains(&policy.display().to_string()),
        "{printed}"
    );

    // Weights of another network: the parameter and both files are named.
    let other = config_with_hidden(&[8]);
    let small = perturbed_network(&other, EnvSpec::vector(4, 2), 1);
    std::fs::write(&policy, Weights::from_network(&small, 1).unwrap().bytes).unwrap();
    let printed = text(&fleet_export(&run, &out));
    assert!(
        printed.contains(&policy.display().to_string()) && printed.contains("policy_tower.0.weight") && printed.contains("config.toml"),
        "{printed}"
    );

    std::fs::remove_file(&policy).unwrap();
    let printed = text(&fleet_export(&run, &out));
    assert!(
        printed.contains(&policy.display().to_string()) && printed.contains("missing"),
        "{printed}"
    );

    let output = Command::new(FLEET)
        .arg("export")
        .arg(&run)
        .args(["--format", "onnx", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let printed = text(&output);
    assert!(
        !output.status.success() && printed.contains("onnx") && printed.contains("torch"),
        "{printed}"
    );
    assert!(!out.exists(), "nothing written on errors");
}

fn config_with_hidden(hidden: &[usize]) -> Config {
    let widths: Vec<String> = hidden.iter().map(usize::to_string).collect();
    load_config(None, &[&format!("network.hidden=[{}]", widths.join(", "))])
}
