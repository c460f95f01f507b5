//! Weights as versioned safetensors blobs: what the learner publishes, what
//! actors load, and what checkpoints hold. The version travels in the
//! safetensors metadata as well as beside the blob on the wire.

use std::collections::HashMap;

use bytes::Bytes;
use candle_core::Tensor;

use crate::ActorCritic;

const VERSION_KEY: &str = "fleet.version";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights blob is not valid safetensors: {0}")]
    Format(String),
    #[error("weights blob lacks parameter `{0}`")]
    Missing(String),
    #[error("parameter `{name}` has shape {found:?}, the network expects {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("parameter `{name}` holds a non-finite value")]
    NonFinite { name: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A serialised set of parameters and the version it was published as.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub version: u64,
    /// Shared, not copied, by every stream that sends it.
    pub bytes: Bytes,
}

impl Weights {
    /// Serialises the network's parameters.
    pub fn from_network(network: &ActorCritic, version: u64) -> Result<Self, WeightsError> {
        let metadata = HashMap::from([(VERSION_KEY.to_string(), version.to_string())]);
        let tensors: Vec<(&str, &Tensor)> = network.params().iter().map(|(n, v)| (n.as_str(), v.as_tensor())).collect();
        let bytes = safetensors::tensor::serialize(tensors, Some(metadata)).map_err(|e| WeightsError::Format(e.to_string()))?;
        Ok(Self {
            version,
            bytes: bytes.into(),
        })
    }

    /// The version recorded inside a blob, if any.
    pub fn version_in(bytes: &[u8]) -> Result<Option<u64>, WeightsError> {
        let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| WeightsError::Format(e.to_string()))?;
        Ok(metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(VERSION_KEY))
            .and_then(|v| v.parse().ok()))
    }

    /// Copies the blob's parameters into `network`. Every parameter must be
    /// present with the right shape and finite values; on error the network
    /// is left unchanged.
    pub fn load_into(&self, network: &ActorCritic) -> Result<(), WeightsError> {
        let loaded =
            candle_core::safetensors::load_buffer(&self.bytes, network.device()).map_err(|e| WeightsError::Format(e.to_string()))?;
        let mut checked = Vec::with_capacity(network.params().len());
        for (name, var) in network.params() {
            let tensor = loaded.get(name).ok_or_else(|| WeightsError::Missing(name.clone()))?;
            if tensor.dims() != var.dims() {
                return Err(WeightsError::Shape {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: tensor.dims().to_vec(),
                });
            }
            let tensor = tensor.to_dtype(var.dtype())?;
            let finite = tensor
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(WeightsError::NonFinite { name: name.clone() });
            }
            checked.push((var, tensor));
        }
        for (var, tensor) in checked {
            var.set(&tensor)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EnvSpec, NetworkConfig};
    use candle_core::Device;

    const SPEC: EnvSpec = EnvSpec::vector(4, 2);

    fn flat(net: &ActorCritic) -> Vec<f32> {
        net.params()
            .iter()
            .flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn round_trip_copies_every_parameter_and_the_version() {
        let a = ActorCritic::new(SPEC, &NetworkConfig::default(), 1, &Device::Cpu).unwrap();
        let b = ActorCritic::new(SPEC, &NetworkConfig::default(), 2, &Device::Cpu).unwrap();
        assert_ne!(flat(&a), flat(&b));
        let w = Weights::from_network(&a, 42).unwrap();
        assert_eq!(Weights::version_in(&w.bytes).unwrap(), Some(42));
        w.load_into(&b).unwrap();
        assert_eq!(flat(&a), flat(&b));
    }

    #[test]
    fn round_trip_covers_the_cnn_torso() {
        let spec = EnvSpec::frames(
            crate::FrameShape {
                channels: 2,
                height: 20,
                width: 20,
            },
            3,
        );
        let config = NetworkConfig {
            torso: crate::Torso::DeepResnet,
            ..Default::default()
        };
        let a = ActorCritic::new(spec, &config, 1, &Device::Cpu).unwrap();
        let b = ActorCritic::new(spec, &config, 2, &Device::Cpu).unwrap();
        assert!(a.params().iter().any(|(n, _)| n == "torso.section2.block1.conv1.weight"));
        Weights::from_network(&a, 3).unwrap().load_into(&b).unwrap();
        assert_eq!(flat(&a), flat(&b));
        // A blob of another torso does not fit.
        let shallow = ActorCritic::new(
            spec,
            &NetworkConfig {
                torso: crate::Torso::ShallowCnn,
                ..Default::default()
            },
            1,
            &Device::Cpu,
        )
        .unwrap();
        let w = Weights::from_network(&shallow, 1).unwrap();
        assert!(matches!(w.load_into(&b), Err(WeightsError::Missing(_))));
    }

    #[test]
    fn wrong_shape_is_an_error_and_leaves_the_network_alone() {
        let small = ActorCritic::new(
            SPEC,
            &NetworkConfig {
                hidden: vec![8],
                ..Default::default()
            },
            1,
            &Device::Cpu,
        )
        .unwrap();
        let net = ActorCritic::new(SPEC, &NetworkConfig::default(), 2, &Device::Cpu).unwrap();
        let before = flat(&net);
        let w = Weights::from_network(&small, 1).unwrap();
        assert!(matches!(w.load_into(&net), Err(WeightsError::Shape { .. })));
        assert_eq!(before, flat(&net));
        let garbage = Weights {
            version: 1,
            bytes: Bytes::from_static(&[1, 2, 3]),
        };
        assert!(matches!(garbage.load_into(&net), Err(WeightsError::Format(_))));
    }
}
