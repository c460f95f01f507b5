//! The learner's state and its update: network, optimiser, update count and
//! weights version. Plain struct, no I/O, so tests and benchmarks drive it
//! directly with synthetic batches.

use candle_core::Device;
use fleet_agent::{ActorCritic, EnvSpec, NetworkConfig, Weights, WeightsError};

use crate::batch::{DeviceBatch, HostBatch};
use crate::config::LearnerConfig;
use crate::loss::{LossWeights, impala_loss};
use crate::optim::Optimiser;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("batch does not fit the network: {0}")]
    Spec(String),
}

/// What one update measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    pub total_loss: f32,
    pub policy_loss: f32,
    pub baseline_loss: f32,
    pub entropy: f32,
    pub grad_norm: f64,
    pub clipped_rho_fraction: f32,
    /// False when the gradient was not finite and the update was skipped.
    pub applied: bool,
}

#[derive(Debug)]
pub struct Learner {
    config: LearnerConfig,
    network: ActorCritic,
    optimiser: Optimiser,
    device: Device,
    updates: u64,
    version: u64,
}

impl Learner {
    pub fn new(spec: EnvSpec, network: &NetworkConfig, config: LearnerConfig, seed: u64, device: Device) -> Result<Self, UpdateError> {
        let network = ActorCritic::new(spec, network, seed, &device)?;
        let optimiser = Optimiser::new(network.vars(), &config)?;
        // Version 1 is the initial network; every applied update adds one.
        Ok(Self {
            config,
            network,
            optimiser,
            device,
            updates: 0,
            version: 1,
        })
    }

    pub fn network(&self) -> &ActorCritic {
        &self.network
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn weights(&self) -> Result<Weights, WeightsError> {
        Weights::from_network(&self.network, self.version)
    }

    pub fn update(&mut self, batch: &HostBatch) -> Result<UpdateStats, UpdateError> {
        if batch.spec != self.network.spec() {
            return Err(UpdateError::Spec(format!(
                "batch has {:?}, network has {:?}",
                batch.spec,
                self.network.spec()
            )));
        }
        let device_batch = DeviceBatch::new(batch, self.config.discount, &self.device)?;
        let weights = LossWeights {
            baseline_cost: self.config.baseline_cost,
            entropy_cost: self.config.entropy_cost,
        };
        let loss = impala_loss(&self.network, &device_batch, &self.config.vtrace(), weights)?;
        let grad_norm = self.optimiser.step(&loss.total)?;
        let applied = grad_norm.is_finite();
        if applied {
            self.updates += 1;
            self.version += 1;
        }
        Ok(UpdateStats {
            total_loss: loss.total.to_scalar()?,
            policy_loss: loss.policy,
            baseline_loss: loss.baseline,
            entropy: loss.entropy,
            grad_norm,
            clipped_rho_fraction: loss.clipped_rho_fraction,
            applied,
        })
    }
}
