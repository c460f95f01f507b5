//! The actor-critic network: two MLP towers of the same shape, one ending in
//! the policy head (logits over discrete actions), one in the value head.
//! Separate towers keep the value loss, whose scale grows with the return,
//! from swamping the policy gradient in a shared torso. Parameters are candle `Var`s held in
//! plain fields (so the model is `Send`) and initialised from a seed, so the
//! same seed gives the same network on every run.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::EnvSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Tanh,
    Relu,
}

/// Shape of the network; the environment spec comes separately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Widths of each tower's hidden layers.
    pub hidden: Vec<usize>,
    pub activation: Activation,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            hidden: vec![64, 64],
            activation: Activation::Tanh,
        }
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden.contains(&0) {
            return Err(format!("hidden layer widths must be positive, got {:?}", self.hidden));
        }
        Ok(())
    }
}

/// One affine layer `y = x Wᵀ + b` over variables.
#[derive(Debug)]
struct Dense {
    weight: Var,
    bias: Var,
}

impl Dense {
    /// Uniform in ±gain/√fan_in (PyTorch's default scale times `gain`), zero bias.
    fn new(
        name: &str,
        fan_in: usize,
        fan_out: usize,
        gain: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        let bound = gain / (fan_in as f64).sqrt();
        let values: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let weight = Var::from_tensor(&Tensor::from_vec(values, (fan_out, fan_in), device)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(fan_out, DType::F32, device)?)?;
        let named = vec![(format!("{name}.weight"), weight.clone()), (format!("{name}.bias"), bias.clone())];
        Ok((Self { weight, bias }, named))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?.broadcast_add(self.bias.as_tensor())
    }
}

/// Policy logits `[N, A]` and state values `[N]` for a batch of observations.
#[derive(Debug)]
pub struct PolicyOutput {
    pub logits: Tensor,
    pub values: Tensor,
}

/// The actor-critic MLP.
#[derive(Debug)]
pub struct ActorCritic {
    spec: EnvSpec,
    config: NetworkConfig,
    policy_tower: Vec<Dense>,
    value_tower: Vec<Dense>,
    policy_head: Dense,
    value_head: Dense,
    /// Every parameter under its stable name, in a fixed order (for
    /// serialisation and the optimiser).
    params: Vec<(String, Var)>,
    device: Device,
}

impl ActorCritic {
    pub fn new(spec: EnvSpec, config: &NetworkConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let mut tower = |prefix: &str, params: &mut Vec<(String, Var)>| -> Result<(Vec<Dense>, usize)> {
            let mut layers = Vec::new();
            let mut width = spec.observation_size;
            for (i, &out) in config.hidden.iter().enumerate() {
                let (layer, named) = Dense::new(&format!("{prefix}.{i}"), width, out, 1.0, &mut rng, device)?;
                layers.push(layer);
                params.extend(named);
                width = out;
            }
            Ok((layers, width))
        };
        let (policy_tower, policy_width) = tower("policy_tower", &mut params)?;
        let (value_tower, value_width) = tower("value_tower", &mut params)?;
        // A small policy head starts near-uniform, which keeps early exploration broad.
        let (policy_head, named) = Dense::new("policy", policy_width, spec.num_actions, 0.01, &mut rng, device)?;
        params.extend(named);
        let (value_head, named) = Dense::new("value", value_width, 1, 1.0, &mut rng, device)?;
        params.extend(named);
        Ok(Self {
            spec,
            config: config.clone(),
            policy_tower,
            value_tower,
            policy_head,
            value_head,
            params,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> EnvSpec {
        self.spec
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameters by name, in a fixed order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// `observations`: `[N, observation_size]` f32.
    pub fn forward(&self, observations: &Tensor) -> Result<PolicyOutput> {
        let logits = self.policy_head.forward(&self.tower(&self.policy_tower, observations)?)?;
        let values = self.value_head.forward(&self.tower(&self.value_tower, observations)?)?.squeeze(1)?;
        Ok(PolicyOutput { logits, values })
    }

    fn tower(&self, layers: &[Dense], input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for layer in layers {
            x = layer.forward(&x)?;
            x = match self.config.activation {
                Activation::Tanh => x.tanh()?,
                Activation::Relu => x.relu()?,
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: EnvSpec = EnvSpec {
        observation_size: 4,
        num_actions: 2,
    };

    #[test]
    fn forward_shapes() {
        let net = ActorCritic::new(SPEC, &NetworkConfig::default(), 0, &Device::Cpu).unwrap();
        let obs = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let out = net.forward(&obs).unwrap();
        assert_eq!(out.logits.dims(), &[3, 2]);
        assert_eq!(out.values.dims(), &[3]);
    }

    #[test]
    fn same_seed_same_network_other_seed_other_network() {
        let a = ActorCritic::new(SPEC, &NetworkConfig::default(), 7, &Device::Cpu).unwrap();
        let b = ActorCritic::new(SPEC, &NetworkConfig::default(), 7, &Device::Cpu).unwrap();
        let c = ActorCritic::new(SPEC, &NetworkConfig::default(), 8, &Device::Cpu).unwrap();
        let w = |n: &ActorCritic| n.params()[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
    }
}
