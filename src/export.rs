//! `fleet export`: a run folder's policy as a self-contained PyTorch module.
//! The export is a folder of three files: `fleet_torch.py` (the module,
//! maintained beside this file as `export/fleet_torch.py` and embedded in the
//! binary), `architecture.json` (what the module builds: the network's
//! config, the observations it reads, the actions and how the policy's
//! output becomes one, the parameters) and a copy of the run's
//! `policy.safetensors`. The tensor names and the forward pass they take
//! part in are documented in `docs/POLICY_FORMAT.md`, and the parity test
//! (`tests/export.rs`) holds the module to fleet's own network.
//!
//! This module only reads a run folder, checks its policy against the
//! network its config describes, and writes the export; it runs no network
//! beyond building one to check the weights against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use fleet_actor::env::{EnvConfig, Preprocess};
use fleet_agent::distribution::LOG_STD_RANGE;
use fleet_agent::{ActionSpec, ActorCritic, EnvSpec, FRAME_SCALE, FrameShape, LogStd, NetworkConfig, Weights};
use serde::{Deserialize, Serialize};

use crate::runs::{POLICY_FILE, RunFolder};

/// The PyTorch module every torch export carries.
pub const TORCH_MODULE: &str = include_str!("export/fleet_torch.py");
pub const TORCH_MODULE_FILE: &str = "fleet_torch.py";
pub const ARCHITECTURE_FILE: &str = "architecture.json";
/// `architecture.json`'s `format` and `format_version`; the module refuses
/// any other. A change to the tensor names or to the forward pass that an
/// older module would compute differently takes a new version. Version 2
/// added continuous actions (`action`, in place of version 1's
/// `num_actions`); the module reads both.
pub const FORMAT: &str = "fleet-policy";
pub const FORMAT_VERSION: u32 = 2;

/// What a policy can be exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A `torch.nn.Module` in a Python file, with the weights as safetensors.
    Torch,
}

/// `architecture.json`: everything the PyTorch module needs to build the
/// network that `policy.safetensors` fits, and what the caller must feed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// [`FORMAT`], so a stray JSON file is not taken for an export.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The weights beside this file.
    pub weights_file: String,
    /// The learner's weights version recorded in the policy file, if any.
    pub weights_version: Option<u64>,
    /// What the environment does before the network, which the caller of
    /// the module must do too.
    pub env: EnvPreprocessing,
    pub observation: Observation,
    /// The actions, and how the policy head's output becomes one.
    pub action: Action,
    /// Frames (u8 observations) are multiplied by this at the input.
    pub frame_scale: f64,
    /// The run's `[network]` section as fleet read it.
    pub network: NetworkConfig,
    /// Every tensor of the policy file, in fleet's parameter order.
    pub parameters: Vec<Parameter>,
}

/// The run's environment and the wrappers fleet applies to its
/// observations outside the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvPreprocessing {
    /// `env.name`.
    pub name: String,
    /// Observations stacked along the channel axis, oldest first (1: none);
    /// already part of `observation.shape`.
    pub frame_stack: usize,
    /// Whether observations were scaled by per-environment running
    /// statistics, which live in the actors and are not saved: the network
    /// expects inputs on that scale.
    pub normalize_observations: bool,
    /// `env.preprocess` (the env bridge's Atari setup, or none).
    pub preprocess: Preprocess,
}

/// One observation as the network reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// `f32` (vectors) or `u8` (frames, 0..=255).
    pub dtype: String,
    /// `[size]`, or `[channels, height, width]` for frames.
    pub shape: Vec<usize>,
}

/// The policy's actions: what its output `[N, W]` holds and how fleet acts
/// with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// `W = num_actions` logits; fleet samples from their softmax, or takes
    /// the first largest (`fleet eval --greedy`).
    Discrete { num_actions: usize },
    /// A diagonal Gaussian: `W = 2·dims`, the means then the log standard
    /// deviations, those clamped to `log_std_range`. fleet acts with a
    /// sample, or the means (`--greedy`), through tanh when `squash`, and
    /// maps that normalised action into `bounds`.
    Continuous {
        dims: usize,
        /// Where the log deviations come from: the parameter
        /// `policy.log_std` (`parameter`) or the head's second half of
        /// outputs (`state_dependent`).
        log_std: LogStd,
        /// [`LOG_STD_RANGE`], which both kinds are clamped to.
        log_std_range: [f32; 2],
        squash: bool,
        /// The environment's action box, which the normalised actions are
        /// mapped into; `None` where the run's config does not tell it (a
        /// bridged environment's come from the bridge at run time).
        bounds: Option<Bounds>,
    },
}

/// An action box per dimension, in the environment's units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    pub low: Vec<f32>,
    pub high: Vec<f32>,
}

/// One tensor of the policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub name: String,
    pub shape: Vec<usize>,
    /// As safetensors names it (`F32`).
    pub dtype: String,
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub dir: PathBuf,
    pub architecture: Architecture,
    pub spec: EnvSpec,
}

impl Exported {
    /// What `fleet export` prints: what was written, and the Python that
    /// loads it.
    pub fn usage(&self) -> String {
        let arch = &self.architecture;
        let dir = self.dir.display().to_string();
        // A JSON string is a valid Python string literal.
        let literal = serde_json::to_string(&dir).unwrap_or_else(|_| format!("{dir:?}"));
        let network = &arch.network;
        let core = match network.core {
            fleet_agent::Core::None => "no core".to_string(),
            fleet_agent::Core::Lstm => format!("LSTM core of {}", network.lstm_size),
        };
        let torso = match network.torso {
            fleet_agent::Torso::Mlp => format!("mlp {:?} {:?}", network.hidden, network.activation).to_lowercase(),
            torso => torso.name().to_string(),
        };
        let version = arch.weights_version.map_or(String::new(), |v| format!(" (weights version {v})"));
        let shape = arch.observation.shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
        let obs = match arch.observation.dtype.as_str() {
            "u8" => format!("uint8 (or float 0..255) [N, {shape}]"),
            _ => format!("float32 [N, {shape}]"),
        };
        let outputs = match arch.action {
            Action::Discrete { .. } => "logits",
            Action::Continuous { .. } => "params",
        };
        let (call, act) = if network.core == fleet_agent::Core::Lstm {
            (
                format!("{outputs}, value, state = model(obs, is_first, state)  # state None: zeros"),
                "action, state = model.act(obs, is_first, state)",
            )
        } else {
            (format!("{outputs}, value = model(obs)"), "action = model.act(obs)")
        };
        let action = match &arch.action {
            Action::Discrete { num_actions } => {
                format!("{act}  # fleet eval --greedy's: the index of the largest of {num_actions} logits")
            }
            Action::Continuous { dims, squash, .. } => {
                let mean = if *squash { "tanh of the means" } else { "the means" };
                format!(
                    "{act}  # fleet eval --greedy's: {mean}; params [N, {}]: {dims} mean(s), then {dims} log std(s)",
                    2 * dims
                )
            }
        };
        let mut text = format!(
            "wrote {dir}: {TORCH_MODULE_FILE}, {ARCHITECTURE_FILE}, {}{version}\n\
             network  {torso}, {core}; {}\n\
             load it in Python (pip install torch safetensors):\n    \
             import sys; sys.path.insert(0, {literal})\n    \
             import fleet_torch\n    \
             model = fleet_torch.load({literal})\n    \
             {call}  # obs: {obs}\n    \
             {action}\n",
            arch.weights_file, self.spec,
        );
        if let Action::Continuous { bounds, .. } = &arch.action {
            let to = match bounds {
                Some(Bounds { low, high }) => format!("the env's bounds, low {low:?} high {high:?}"),
                None => "the env's bounds (not in the run's config: pass low and high)".to_string(),
            };
            text.push_str(&format!(
                "note     fleet's actions are normalised to [-1, 1]; model.env_action(action) maps them into {to}, as fleet does\n"
            ));
        }
        if arch.env.frame_stack > 1 {
            text.push_str(&format!(
                "note     observations are the last {} frames of {} stacked along the channel axis, oldest first, as fleet's actors stack them\n",
                arch.env.frame_stack, arch.env.name
            ));
        }
        if arch.env.normalize_observations {
            text.push_str(
                "note     the run trained on observations normalised by each actor's running mean and deviation (env.normalize_observations), which are not saved: feed the network observations on that scale\n",
            );
        }
        text
    }
}

/// Writes the policy of the run folder `run` into `out` (created if need
/// be) in `format`. Errors name the file at fault: a missing run folder or
/// config, a missing or corrupt policy file, weights that do not fit the
/// network the config describes.
pub fn export(run: &Path, format: Format, out: &Path) -> Result<Exported> {
    let Format::Torch = format;
    let folder = RunFolder::open(run)?;
    let config_path = folder.config_path();
    let (env, network) = read_config(&config_path)?;

    let policy_path = folder.policy_path();
    let bytes = match std::fs::read(&policy_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} is missing: the run has no final policy (fleet run writes it at exit from the learner's newest checkpoint)",
            policy_path.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("reading {}", policy_path.display())),
    };
    let corrupt = |error: &dyn std::fmt::Display| anyhow!("{}: not a fleet policy: {error}", policy_path.display());
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| corrupt(&e))?;
    let version = Weights::version_in(&bytes).map_err(|e| corrupt(&e))?;

    let (spec, bounds) = env_spec(&env, &tensors, &config_path)?;
    if let Err(message) = network.check_spec(&spec) {
        bail!("{}: {message} (env.name = `{}`)", config_path.display(), env.name);
    }
    let net = ActorCritic::new(spec, &network, 0, &Device::Cpu)
        .with_context(|| format!("{}: building the network it describes", config_path.display()))?;
    Weights {
        version: 0,
        bytes: bytes.clone().into(),
    }
    .load_into(&net)
    .map_err(|error| {
        anyhow!(
            "{}: {error} (the network of {}: {}, on {spec})",
            policy_path.display(),
            config_path.display(),
            describe(&network)
        )
    })?;
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|name| !net.params().iter().any(|(n, _)| n == *name))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        bail!(
            "{}: tensors the network of {} does not have: {extra:?}",
            policy_path.display(),
            config_path.display()
        );
    }
    let parameters = net
        .params()
        .iter()
        .map(|(name, _)| {
            let tensor = &tensors[name];
            Parameter {
                name: name.clone(),
                shape: tensor.dims().to_vec(),
                dtype: format!("{:?}", tensor.dtype()).to_uppercase(),
            }
        })
        .collect();
    let architecture = Architecture {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        weights_file: POLICY_FILE.into(),
        weights_version: version,
        env: EnvPreprocessing {
            name: env.name.clone(),
            frame_stack: env.frame_stack,
            normalize_observations: env.normalize_observations,
            preprocess: env.preprocess,
        },
        observation: Observation {
            dtype: spec.observation_dtype().to_string(),
            shape: spec.observation.shape(),
        },
        action: match spec.action {
            ActionSpec::Discrete { num_actions } => Action::Discrete { num_actions },
            ActionSpec::Continuous { dims } => Action::Continuous {
                dims,
                log_std: network.log_std,
                log_std_range: [LOG_STD_RANGE.0, LOG_STD_RANGE.1],
                squash: network.squash,
                bounds,
            },
        },
        frame_scale: FRAME_SCALE,
        network,
        parameters,
    };

    std::fs::create_dir_all(out).with_context(|| format!("creating the export folder {}", out.display()))?;
    let mut json = serde_json::to_vec_pretty(&architecture).context("serialising the architecture")?;
    json.push(b'\n');
    for (name, contents) in [
        (TORCH_MODULE_FILE, TORCH_MODULE.as_bytes()),
        (ARCHITECTURE_FILE, &json),
        (POLICY_FILE, &bytes),
    ] {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Exported {
        dir: out.to_path_buf(),
        architecture,
        spec,
    })
}

/// The `[env]` and `[network]` sections of a run's `config.toml`, the only
/// ones the policy depends on (the rest, auth and TLS files included, need
/// not exist where the policy is exported).
fn read_config(path: &Path) -> Result<(EnvConfig, NetworkConfig)> {
    #[derive(Deserialize)]
    struct PolicyConfig {
        #[serde(default)]
        env: EnvConfig,
        #[serde(default)]
        network: NetworkConfig,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: PolicyConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    config
        .network
        .validate()
        .map_err(|message| anyhow!("{}: invalid network: {message}", path.display()))?;
    Ok((config.env, config.network))
}

/// The observation and action spec the run's network was built for, and
/// continuous actions' bounds where known: a native environment's own
/// (continuous actions without bounds of their own are fleet's `[-1, 1]`);
/// a bridged one's spec from `env.spec` (which `fleet run` records in the
/// run's config after asking the bridge), or, for a config without it, the
/// Atari setup's from its settings (channels, screen) and the policy head
/// (actions).
fn env_spec(env: &EnvConfig, tensors: &HashMap<String, Tensor>, config_path: &Path) -> Result<(EnvSpec, Option<Bounds>)> {
    if !env.is_bridged() {
        let made = env
            .make(0)
            .map_err(|error| anyhow!("{}: env `{}`: {error}", config_path.display(), env.name))?;
        let spec = made.spec();
        let bounds = match spec.action {
            ActionSpec::Discrete { .. } => None,
            ActionSpec::Continuous { dims } => {
                let bounds = made
                    .action_bounds()
                    .unwrap_or_else(|| fleet_trajectory::ActionBounds::uniform(dims, -1.0, 1.0));
                Some(Bounds {
                    low: bounds.low,
                    high: bounds.high,
                })
            }
        };
        return Ok((spec, bounds));
    }
    if let Some(spec) = env.spec {
        return Ok((spec, None));
    }
    if env.preprocess == Preprocess::Atari {
        let atari = env.atari;
        let num_actions = tensors
            .get("policy.weight")
            .and_then(|t| t.dims().first().copied())
            .ok_or_else(|| anyhow!("the policy file has no `policy.weight`, so the number of actions is unknown"))?;
        let frame = FrameShape {
            channels: atari.frame_stack as usize * if atari.grayscale { 1 } else { 3 },
            height: atari.screen_size as usize,
            width: atari.screen_size as usize,
        };
        return Ok((EnvSpec::frames(frame, num_actions), None));
    }
    bail!(
        "{}: env `{}` is served by the env bridge and the config does not record its observations (env.spec is empty): \
         set it there, as `fleet run` printed it at start (runs record it themselves), e.g. \
         spec = {{ observation = {{ vector = {{ size = 4 }} }}, action = {{ discrete = {{ num_actions = 2 }} }} }} under [env]",
        config_path.display(),
        env.name
    )
}

/// `torso, core` of a network config, for error messages.
fn describe(network: &NetworkConfig) -> String {
    let core = match network.core {
        fleet_agent::Core::None => "no core".to_string(),
        fleet_agent::Core::Lstm => format!("lstm {}", network.lstm_size),
    };
    format!("torso {} {:?}, {core}", network.torso.name(), network.hidden)
}
