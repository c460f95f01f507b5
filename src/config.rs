//! The one config format: a TOML document built in layers — the embedded
//! default (`config/default.toml`), then a file, then `FLEET_…` environment
//! variables, then flags — and deserialised strictly, so an unknown key or a
//! bad value is an error that names the key. The bearer token (`[auth]`)
//! is read here too, from its file or `FLEET_AUTH_TOKEN`, so that a missing
//! or empty one stops a process before it starts anything; the token itself
//! is never part of the serialised config. So are the TLS files (`[tls]`):
//! read and checked at load, so that a bad one stops a process just as
//! early; only their paths are part of the config.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use fleet_actor::ActorConfig;
use fleet_actor::env::EnvConfig;
use fleet_agent::NetworkConfig;
use fleet_learner::LearnerConfig;
use fleet_proto::auth::BearerToken;
use fleet_proto::tls::{Tls, TlsFiles};
use fleet_replay::ReplayConfig;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The embedded default; also documents every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variables with this prefix set config keys.
const ENV_PREFIX: &str = "FLEET_";

/// The environment variable that holds the bearer token itself (the
/// alternative to `auth.token_file`; empty counts as unset). Not a config
/// key, so it never reaches a config file.
pub const TOKEN_ENV: &str = "FLEET_AUTH_TOKEN";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub env: EnvConfig,
    pub network: NetworkConfig,
    pub actor: ActorConfig,
    pub replay: ReplayConfig,
    pub learner: LearnerConfig,
    pub run: RunConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
}

/// `[tls]`: TLS on every fleet gRPC server and client, mutual TLS with
/// `client_ca_file`. Every key empty: TLS off, plain text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This process's certificate chain (PEM): servers serve with it,
    /// clients present it when a server requires client certificates.
    pub cert_file: String,
    /// `cert_file`'s private key (PEM).
    pub key_file: String,
    /// The CA certificates (PEM) clients check servers against.
    pub ca_file: String,
    /// The CA certificates (PEM) client certificates must be issued by;
    /// set: servers refuse clients without one (mutual TLS).
    pub client_ca_file: String,
    /// The name clients expect in servers' certificates; empty: the host
    /// of the address they dial.
    pub server_name: String,
    /// The files, read and checked by [`Config::load`]. Skipped by serde:
    /// the effective config `fleet run` writes for its children holds the
    /// paths, and each child reads the files itself.
    #[serde(skip)]
    pub loaded: Tls,
}

impl TlsConfig {
    /// Reads and checks the files the keys name (see [`Tls::load`]); an
    /// error names the key and the file.
    pub fn load(&self) -> Result<Tls> {
        Tls::load(&TlsFiles {
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            ca_file: &self.ca_file,
            client_ca_file: &self.client_ca_file,
            server_name: &self.server_name,
        })
        .map_err(|error| anyhow::Error::new(error).context("invalid config"))
    }
}

/// `[auth]`: the shared bearer token every fleet gRPC service requires
/// (health excepted) and every fleet client sends. No token: auth off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding the token (surrounding whitespace ignored), so that
    /// the secret stays out of config files, flags and `ps`; empty: none.
    pub token_file: String,
    /// The token, from `token_file` or [`TOKEN_ENV`], read by
    /// [`Config::load`]. Skipped by serde: the effective config that
    /// `fleet run` writes for its children, `fleet config` and the logs
    /// never hold it (children read the same file or variable themselves).
    #[serde(skip)]
    pub token: Option<BearerToken>,
}

impl AuthConfig {
    /// The token that `token_file` or the `TOKEN_ENV` variable among `env`
    /// gives, if any. A named file that is missing, unreadable, empty or
    /// holds no valid token is an error naming the file (never quoting it);
    /// both at once are an error, as one of them would silently lose.
    pub fn read_token(&self, env: &[(String, String)]) -> Result<Option<BearerToken>> {
        let from_env = env
            .iter()
            .rev()
            .find(|(name, _)| name == TOKEN_ENV)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty());
        match (self.token_file.as_str(), from_env) {
            ("", None) => Ok(None),
            ("", Some(value)) => BearerToken::new(value)
                .map(Some)
                .map_err(|error| anyhow!("invalid config: {TOKEN_ENV}: {error}")),
            (file, None) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("invalid config: auth.token_file: cannot read the token file {file}"))?;
                match BearerToken::new(text.trim()) {
                    Ok(token) => Ok(Some(token)),
                    Err(fleet_proto::auth::TokenError::Empty) => {
                        bail!("invalid config: auth.token_file: the token file {file} is empty")
                    }
                    Err(error) => bail!("invalid config: auth.token_file: the token file {file}: {error}"),
                }
            }
            (file, Some(_)) => bail!("invalid config: both auth.token_file ({file}) and {TOKEN_ENV} give a bearer token; set only one"),
        }
    }
}

/// Settings of `fleet run` (the single-machine launcher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub actors: usize,
    pub target_return: f64,
    pub max_env_steps: u64,
    /// Env steps to keep training after the target is first reached (0:
    /// stop there); the run then succeeds only if the return never fell
    /// below `hold_min_return` meanwhile.
    pub hold_env_steps: u64,
    pub hold_min_return: f64,
    pub progress_interval_secs: f64,
    /// Also write the progress rows as TensorBoard event files, under the
    /// run folder's `tensorboard/`.
    pub tensorboard: bool,
}

/// Where each layer of a config comes from.
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    pub file: Option<std::path::PathBuf>,
    /// `(NAME, value)` pairs, normally `std::env::vars()`.
    pub env: Vec<(String, String)>,
    /// `section.key=value` overrides, in order.
    pub overrides: Vec<String>,
}

impl Config {
    pub fn load(sources: &ConfigSources) -> Result<Self> {
        let mut doc: Table = DEFAULT_TOML.parse().context("embedded default config")?;
        if let Some(path) = &sources.file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
            let file: Table = text.parse().with_context(|| format!("parsing config file {}", path.display()))?;
            merge(&mut doc, file, &mut Vec::new()).with_context(|| format!("in config file {}", path.display()))?;
        }
        for (name, raw) in &sources.env {
            let Some(key) = env_key(name, &doc) else {
                continue;
            };
            set_key(&mut doc, &key, raw).with_context(|| format!("environment variable {name}"))?;
        }
        for assignment in &sources.overrides {
            let (key, raw) = assignment
                .split_once('=')
                .ok_or_else(|| anyhow!("flag --set {assignment}: expected section.key=value"))?;
            set_key(&mut doc, key.trim(), raw.trim()).with_context(|| format!("flag --set {assignment}"))?;
        }
        let mut config: Config = serde_path_to_error::deserialize(Value::Table(doc)).map_err(|e| {
            let path = e.path().to_string();
            anyhow!("config key `{path}`: {}", e.into_inner())
        })?;
        config.validate()?;
        config.auth.token = config.auth.read_token(&sources.env)?;
        config.tls.loaded = config.tls.load()?;
        Ok(config)
    }

    /// The environment's spec, asking the env bridge for a bridged one
    /// (unless `env.spec` gives it), checked against the network.
    pub async fn resolved_env_spec(&self) -> Result<fleet_agent::EnvSpec> {
        let spec = self
            .env
            .resolve_spec(self.replay.max_message_bytes)
            .await
            .map_err(|error| anyhow!("env `{}`: {error}", self.env.name))?;
        self.check_network_fits(&spec)?;
        Ok(spec)
    }

    /// Whether the network can be built for `spec`.
    pub fn check_network_fits(&self, spec: &fleet_agent::EnvSpec) -> Result<()> {
        if let Err(message) = self.network.check_spec(spec) {
            bail!("invalid config: {message} (env.name = `{}`)", self.env.name);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let checks = [
            self.network.validate(),
            self.actor.validate(),
            self.replay.validate(),
            self.learner.validate(),
        ];
        for check in checks {
            check.map_err(|message| anyhow!("invalid config: {message}"))?;
        }
        if let Err(error) = fleet_actor::env::check_frame_stack(self.env.frame_stack) {
            bail!("invalid config: env.frame_stack: {error}");
        }
        if let Err(error) = self.env.check() {
            bail!("invalid config: env.name: {error}");
        }
        // A bridged environment's spec is known once the bridge answers
        // (see `resolved_env_spec`); a native one's now.
        let spec = if self.env.is_bridged() {
            if let Some(spec) = &self.env.spec
                && let Err(error) = self.env.check_spec(spec)
            {
                bail!("invalid config: env.normalize_observations: {error}")
            }
            self.env.spec
        } else {
            match self.env.make(0) {
                Ok(env) => Some(env.spec()),
                Err(error @ fleet_actor::env::EnvError::NormalizedFrames(_)) => {
                    bail!("invalid config: env.normalize_observations: {error}")
                }
                Err(error) => bail!("invalid config: env: {error}"),
            }
        };
        if let Some(spec) = spec {
            self.check_network_fits(&spec)?;
        }
        if self.learner.minibatches > 1 && self.network.core != fleet_agent::Core::None {
            bail!(
                "invalid config: learner.minibatches = {} needs a feed-forward network (network.core = \"none\"): a recurrent core's steps depend on the steps before them",
                self.learner.minibatches
            );
        }
        if self.run.actors == 0 {
            bail!("invalid config: run.actors must be at least 1");
        }
        if !(self.run.progress_interval_secs > 0.0 && self.run.progress_interval_secs.is_finite()) {
            bail!(
                "invalid config: run.progress_interval_secs must be positive, got {}",
                self.run.progress_interval_secs
            );
        }
        if self.run.target_return.is_nan() || self.run.hold_min_return.is_nan() {
            bail!("invalid config: run.target_return and run.hold_min_return must be numbers, not NaN");
        }
        let mut named = vec![("actor.table", &self.actor.table), ("learner.table", &self.learner.table)];
        named.extend(self.actor.also_tables.iter().map(|t| ("actor.also_tables", t)));
        if self.learner.replay_fraction > 0.0 {
            named.push(("learner.replay_table", &self.learner.replay_table));
        }
        for (key, table) in named {
            if !self.replay.tables.iter().any(|t| &t.name == table) {
                bail!("invalid config: {key} names table `{table}`, which replay.tables does not declare");
            }
        }
        let fed = |table: &String| &self.actor.table == table || self.actor.also_tables.contains(table);
        if self.learner.replay_fraction > 0.0 && !fed(&self.learner.replay_table) {
            bail!(
                "invalid config: learner.replay_fraction is {} but the actors never insert into learner.replay_table `{}`: add it to actor.also_tables",
                self.learner.replay_fraction,
                self.learner.replay_table
            );
        }
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serialising the effective config")
    }

    pub fn write_to(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_toml()?).with_context(|| format!("writing {}", path.display()))
    }
}

/// Overlays `src` onto `dst`: tables merge key by key, anything else replaces.
/// Keys that the default does not know are errors naming the key.
fn merge(dst: &mut Table, src: Table, path: &mut Vec<String>) -> Result<()> {
    for (key, value) in src {
        path.push(key.clone());
        match (dst.get_mut(&key), value) {
            (Some(Value::Table(d)), Value::Table(s)) => merge(d, s, path)?,
            (Some(slot), value) => *slot = value,
            (None, value) if is_free_form(&path[..path.len() - 1]) => {
                dst.insert(key, value);
            }
            (None, _) => bail!("unknown config key `{}`", path.join(".")),
        }
        path.pop();
    }
    Ok(())
}

/// Whether the table at `path` is free-form (its keys are not fleet's):
/// the default config leaves it an empty table, as `env.options`.
fn is_free_form<S: AsRef<str>>(path: &[S]) -> bool {
    let Ok(mut table) = DEFAULT_TOML.parse::<Table>() else {
        return false;
    };
    for (i, section) in path.iter().enumerate() {
        match table.remove(section.as_ref()) {
            Some(Value::Table(inner)) if i + 1 == path.len() => return inner.is_empty(),
            Some(Value::Table(inner)) => table = inner,
            _ => return false,
        }
    }
    false
}

/// Maps `FLEET_SECTION__KEY` to `section.key`; a name without `__` counts
/// only when it names a top-level scalar key (other `FLEET_…` variables, such
/// as test switches, are not config).
fn env_key(name: &str, doc: &Table) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    if rest.contains("__") {
        return Some(rest.replace("__", "."));
    }
    match doc.get(&rest) {
        Some(Value::Table(_)) | None => None,
        Some(_) => Some(rest),
    }
}

/// Sets a dotted key to a raw value: parsed as a TOML value when it is one
/// (numbers, booleans, arrays), else taken as a string.
fn set_key(doc: &mut Table, key: &str, raw: &str) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, sections) = parts.split_last().ok_or_else(|| anyhow!("empty config key"))?;
    let mut table = &mut *doc;
    for (i, section) in sections.iter().enumerate() {
        table = match table.get_mut(*section) {
            Some(Value::Table(t)) => t,
            _ => bail!("unknown config key `{}`", parts[..=i].join(".")),
        };
    }
    if table.get(*last).is_none() && is_free_form(&parts[..parts.len() - 1]) {
        table.insert((*last).to_owned(), Value::String(String::new()));
    }
    let slot = table.get_mut(*last).ok_or_else(|| anyhow!("unknown config key `{key}`"))?;
    if slot.is_table() {
        bail!("config key `{key}` is a section, not a value");
    }
    let value = parse_value(raw);
    *slot = match (&*slot, value) {
        // A string-typed key keeps what the user typed, even if it looks like a number.
        (Value::String(_), _) => Value::String(raw.to_string()),
        (_, value) => value,
    };
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], overrides: &[&str]) -> Result<Config> {
        Config::load(&ConfigSources {
            file: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn embedded_default_equals_the_code_defaults() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config.network, NetworkConfig::default());
        assert_eq!(config.actor, ActorConfig::default());
        assert_eq!(config.replay, ReplayConfig::default());
        assert_eq!(config.learner, LearnerConfig::default());
        assert_eq!(config.env, fleet_actor::env::EnvConfig::default());
        assert_eq!(config.auth, AuthConfig::default());
        assert_eq!(config.tls, TlsConfig::default());
        assert!(!config.tls.loaded.is_on(), "TLS is off by default");
    }

    #[test]
    fn bridged_env_options_and_spec_load_and_survive_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pong.toml");
        std::fs::write(
            &file,
            "[env]\nname = \"gym:ALE/Pong-v5\"\noptions = { frameskip = 4, full_action_space = false, mode = \"x\" }\n\
             [env.spec]\nobservation = { frames = { channels = 4, height = 84, width = 84 } }\n\
             action = { discrete = { num_actions = 6 } }\n[network]\ntorso = \"shallow_cnn\"\n",
        )
        .unwrap();
        let config = Config::load(&ConfigSources {
            file: Some(file.clone()),
            env: Vec::new(),
            overrides: vec!["env.options.repeat_action_probability=0.25".into()],
        })
        .unwrap();
        let options: Vec<(&str, &str)> = config.env.options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            options,
            [
                ("frameskip", "4"),
                ("full_action_space", "false"),
                ("mode", "x"),
                ("repeat_action_probability", "0.25")
            ]
        );
        let spec = config.env.spec.expect("env.spec was given");
        assert_eq!((spec.observation_size(), spec.policy_width()), (4 * 84 * 84, 6));
        // What `fleet run` writes for its children reads back the same.
        let effective = dir.path().join("effective.toml");
        config.write_to(&effective).unwrap();
        let reread = Config::load(&ConfigSources {
            file: Some(effective),
            ..ConfigSources::default()
        })
        .unwrap();
        assert_eq!(reread.env, config.env);
        // A bridged env's spec, when given, is checked against the network
        // before anything starts; when not, once the bridge answers.
        let not_yet_known = load(&[], &["env.name=gym:ALE/Pong-v5", "network.torso=deep_resnet"]).unwrap();
        assert!(not_yet_known.env.spec.is_none());
        let vectors = dir.path().join("vectors.toml");
        std::fs::write(
            &vectors,
            "[env]\nname = \"gym:CartPole-v1\"\n[env.spec]\nobservation = { vector = { size = 4 } }\n\
             action = { discrete = { num_actions = 2 } }\n[network]\ntorso = \"shallow_cnn\"\n",
        )
        .unwrap();
        let error = Config::load(&ConfigSources {
            file: Some(vectors),
            ..ConfigSources::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("needs image observations"), "{error:#}");
    }

    #[test]
    fn misplaced_env_settings_are_refused_naming_them() {
        assert_eq!(
            load(&[], &["env.name=gym:CartPole-v1", "env.frame_stack=4"])
                .unwrap()
                .env
                .frame_stack,
            4
        );
        let error = load(&[], &["env.name=gym:ALE/Pong-v5", "env.preprocess=atari", "env.frame_stack=2"]).unwrap_err();
        assert!(
            format!("{error:#}").contains("env.frame_stack = 2") && format!("{error:#}").contains("env.atari.frame_stack"),
            "{error:#}"
        );
        let error = load(&[], &["env.name=envpool:", "env.remote=localhost:1"]).unwrap_err();
        assert!(format!("{error:#}").contains("names no environment"), "{error:#}");
        let error = load(&[], &["env.preprocess=atari"]).unwrap_err();
        assert!(
            format!("{error:#}").contains("env.preprocess applies to bridged environments only"),
            "{error:#}"
        );
        let error = load(
            &[],
            &["env.name=gym:ALE/Pong-v5", "env.preprocess=atari", "env.atari.frame_stack=0"],
        )
        .unwrap_err();
        assert!(format!("{error:#}").contains("env.atari.frame_stack = 0"), "{error:#}");
        let error = load(
            &[],
            &[
                "env.name=gym:ALE/Pong-v5",
                "env.preprocess=atari",
                "env.atari.repeat_action_probability=1.5",
            ],
        )
        .unwrap_err();
        assert!(format!("{error:#}").contains("repeat_action_probability = 1.5"), "{error:#}");
        let atari = load(&[], &["env.name=gym:ALE/Pong-v5", "env.preprocess=atari"]).unwrap().env;
        assert_eq!(atari.atari.message().frame_stack, 4);
        let remote = load(&[], &["env.name=MyEnv-v0", "env.remote=envbridge:50070"]).unwrap();
        assert!(remote.env.is_bridged());
        assert!(!load(&[], &[]).unwrap().env.is_bridged());
    }

    #[test]
    fn bridged_vectors_may_be_normalised_and_bridged_frames_may_not() {
        let normalised = load(&[], &["env.name=gym:HalfCheetah-v5", "env.normalize_observations=true"]).unwrap();
        assert!(normalised.env.normalize_observations && normalised.env.is_bridged());
        // With the spec known, frames are refused before anything starts.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pong.toml");
        std::fs::write(
            &file,
            "[env]\nname = \"gym:ALE/Pong-v5\"\npreprocess = \"atari\"\nnormalize_observations = true\n\
             [env.spec]\nobservation = { frames = { channels = 4, height = 84, width = 84 } }\n\
             action = { discrete = { num_actions = 6 } }\n[network]\ntorso = \"shallow_cnn\"\n",
        )
        .unwrap();
        let error = Config::load(&ConfigSources {
            file: Some(file),
            ..ConfigSources::default()
        })
        .unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains("env.normalize_observations") && error.contains("gym:ALE/Pong-v5") && error.contains("image frames"),
            "{error}"
        );
    }

    #[test]
    fn every_shipped_config_file_loads_and_validates() {
        let dirs = [
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"),
        ];
        let mut checked = 0;
        for entry in dirs.into_iter().flat_map(|dir| std::fs::read_dir(dir).unwrap()) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(&ConfigSources {
                    file: Some(path.clone()),
                    ..ConfigSources::default()
                });
                assert!(config.is_ok(), "{}: {:#}", path.display(), config.unwrap_err());
                checked += 1;
            }
        }
        assert!(checked >= 6, "expected default.toml, the example configs and the compose configs");
    }

    #[test]
    fn layers_apply_in_order() {
        let config = load(
            &[
                ("FLEET_SEED", "5"),
                ("FLEET_LEARNER__LEARNING_RATE", "0.5"),
                ("FLEET_REQUIRE_DOCKER", "1"),
            ],
            &["seed=9"],
        )
        .unwrap();
        assert_eq!(config.seed, 9);
        assert_eq!(config.learner.learning_rate, 0.5);
        let config = load(&[], &["network.hidden=[32]", "env.name=CartPole-v1"]).unwrap();
        assert_eq!(config.network.hidden, vec![32]);
    }

    #[test]
    fn file_layer_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[actor]\nnum_envs = 3\n").unwrap();
        let config = Config::load(&ConfigSources {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.actor.num_envs, 3);
        std::fs::write(&path, "[actor]\nnum_envz = 3\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(&ConfigSources {
                file: Some(path),
                ..Default::default()
            })
            .unwrap_err()
        );
        assert!(err.contains("actor.num_envz") && err.contains("c.toml"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = format!("{:#}", load(&[], &["learner.batch_sise=3"]).unwrap_err());
        assert!(err.contains("learner.batch_sise"), "{err}");
        let err = format!("{:#}", load(&[("FLEET_ACTOR__NUM_ENVS", "many")], &[]).unwrap_err());
        assert!(err.contains("actor.num_envs") && err.contains("many"), "{err}");
        let err = format!("{:#}", load(&[], &["learner.discount=1.5"]).unwrap_err());
        assert!(err.contains("learner.discount"), "{err}");
        let err = format!("{:#}", load(&[], &["env.name=Pong"]).unwrap_err());
        assert!(err.contains("env.name"), "{err}");
        let err = format!("{:#}", load(&[], &["seed"]).unwrap_err());
        assert!(err.contains("section.key=value"), "{err}");
        let err = format!("{:#}", load(&[], &["learner.minibatches=0"]).unwrap_err());
        assert!(err.contains("learner.minibatches"), "{err}");
        assert!(load(&[], &["learner.minibatches=4"]).is_ok());
        let err = format!("{:#}", load(&[], &["learner.minibatches=4", "network.core=lstm"]).unwrap_err());
        assert!(err.contains("learner.minibatches") && err.contains("network.core"), "{err}");
    }

    #[test]
    fn frame_stack_and_torso_are_checked_against_the_environment() {
        let config = load(&[], &["env.name=catch", "env.frame_stack=4", "network.torso=deep_resnet"]).unwrap();
        assert_eq!((config.env.frame_stack, config.network.torso), (4, fleet_agent::Torso::DeepResnet));
        assert!(load(&[], &["env.name=catch", "network.torso=shallow_cnn"]).is_ok());
        let err = format!("{:#}", load(&[], &["env.frame_stack=0"]).unwrap_err());
        assert!(err.contains("env.frame_stack") && err.contains("frame stack of 0"), "{err}");
        let err = format!(
            "{:#}",
            load(&[], &["env.name=catch", "env.normalize_observations=true"]).unwrap_err()
        );
        assert!(err.contains("env.normalize_observations") && err.contains("catch"), "{err}");
        assert!(load(&[], &["env.name=cartpole-masked", "env.normalize_observations=true"]).is_ok());
        let err = format!("{:#}", load(&[], &["network.torso=shallow_cnn"]).unwrap_err());
        assert!(
            err.contains("network.torso") && err.contains("shallow_cnn") && err.contains("CartPole-v1"),
            "{err}"
        );
        let err = format!("{:#}", load(&[], &["network.torso=resnet"]).unwrap_err());
        assert!(err.contains("network.torso"), "{err}");
    }

    #[test]
    fn the_token_comes_from_its_file_or_the_environment_and_a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let path = file.display().to_string();
        let with_file = format!("auth.token_file={path}");
        assert_eq!(load(&[], &[]).unwrap().auth.token, None, "no token: auth off");
        assert_eq!(load(&[(TOKEN_ENV, "  ")], &[]).unwrap().auth.token, None, "empty: unset");

        // Missing, empty, or not a token: errors that name the file and
        // never quote what it holds.
        let error = format!("{:#}", load(&[], &[&with_file]).unwrap_err());
        assert!(error.contains("auth.token_file") && error.contains(&path), "{error}");
        std::fs::write(&file, " \n").unwrap();
        let error = format!("{:#}", load(&[], &[&with_file]).unwrap_err());
        assert!(error.contains(&path) && error.contains("is empty"), "{error}");
        std::fs::write(&file, "two words\n").unwrap();
        let error = format!("{:#}", load(&[], &[&with_file]).unwrap_err());
        assert!(error.contains(&path) && !error.contains("two words"), "{error}");
        let error = format!(
            "{:#}",
            load(&[], &[&format!("auth.token_file={}", dir.path().display())]).unwrap_err()
        );
        assert!(
            error.contains(&dir.path().display().to_string()),
            "a directory is unreadable: {error}"
        );

        // Surrounding whitespace (the file's newline) is not part of the token.
        std::fs::write(&file, "s3cret-token\n").unwrap();
        let config = load(&[], &[&with_file]).unwrap();
        assert_eq!(config.auth.token, Some(BearerToken::new("s3cret-token").unwrap()));
        let from_env = load(&[("FLEET_AUTH__TOKEN_FILE", path.as_str())], &[]).unwrap();
        assert_eq!(from_env.auth, config.auth, "the file's key layers like any other");
        let error = format!("{:#}", load(&[(TOKEN_ENV, "other")], &[&with_file]).unwrap_err());
        assert!(
            error.contains(TOKEN_ENV) && error.contains(&path) && !error.contains("other"),
            "{error}"
        );
        let config = load(&[(TOKEN_ENV, "from-env")], &[]).unwrap();
        assert_eq!(config.auth.token, Some(BearerToken::new("from-env").unwrap()));
        assert!(!config.to_toml().unwrap().contains("from-env"), "the token is never serialised");
        assert!(!format!("{config:?}").contains("from-env"), "nor printed");
        let error = format!("{:#}", load(&[(TOKEN_ENV, "a b")], &[]).unwrap_err());
        assert!(error.contains(TOKEN_ENV) && !error.contains("a b"), "{error}");
    }

    #[test]
    fn tls_files_layer_like_any_key_and_a_missing_one_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("cert.pem").display().to_string();
        let from_env = format!("{:#}", load(&[("FLEET_TLS__CERT_FILE", missing.as_str())], &[]).unwrap_err());
        assert!(
            from_env.starts_with("invalid config: tls.key_file is empty") && from_env.contains("tls.cert_file is set"),
            "{from_env}"
        );
        let error = format!(
            "{:#}",
            load(
                &[("FLEET_TLS__CERT_FILE", missing.as_str())],
                &["tls.key_file=k.pem", "tls.ca_file=ca.pem"]
            )
            .unwrap_err()
        );
        assert!(error.contains(&format!("tls.cert_file: cannot read {missing}")), "{error}");
        let error = format!("{:#}", load(&[("FLEET_TLS__SERVER_NAME", "replay")], &[]).unwrap_err());
        assert!(error.contains("tls.cert_file is empty"), "{error}");
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let config = load(&[], &["seed=3", "run.actors=4"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("effective.toml");
        config.write_to(&path).unwrap();
        let again = Config::load(&ConfigSources {
            file: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config, again);
    }
}
