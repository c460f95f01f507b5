//! The trajectory contract's values as candle tensors: observations, which
//! cross to the network's device in the type they travel in (u8 frames
//! become f32 there), and the recurrent state in the contract's flat layout
//! (`[N, h | c]`, see `fleet_trajectory::state`) — the one place that turns
//! the LSTM's pair of tensors into the rows the actor records and the
//! learner starts from, and back.

use candle_core::{Device, Result, Tensor};
use fleet_trajectory::{ObservationsRef, StateSpec};

use crate::network::{ActorCritic, Core, NetworkConfig, RecurrentState};

/// `observations` as a `[rows, width]` tensor on `device`, the network's
/// input, in their own dtype: u8 frames (whole intensities 0..=255) stay u8,
/// a quarter of the bytes, and the network converts them where it reads
/// them (a CNN's first convolution, image by image in cache).
pub fn observations_tensor(observations: ObservationsRef<'_>, rows: usize, width: usize, device: &Device) -> Result<Tensor> {
    match observations {
        ObservationsRef::F32(v) => Tensor::from_slice(v, (rows, width), device),
        ObservationsRef::U8(v) => Tensor::from_slice(v, (rows, width), device),
    }
}

impl NetworkConfig {
    /// The state a network of this shape carries, `None` for feed-forward.
    pub fn state_spec(&self) -> Option<StateSpec> {
        (self.core == Core::Lstm).then_some(StateSpec::Lstm { hidden: self.lstm_size })
    }
}

impl ActorCritic {
    /// The state this network carries, `None` for feed-forward.
    pub fn state_spec(&self) -> Option<StateSpec> {
        self.is_recurrent().then(|| StateSpec::Lstm { hidden: self.state_size() })
    }
}

impl RecurrentState {
    /// `[N, 2·hidden]`: each row is one environment's `h` then its `c`.
    pub fn to_flat(&self) -> Result<Tensor> {
        Tensor::cat(&[&self.h, &self.c], 1)
    }

    /// The state whose flat rows are `flat` (`[N, spec.width()]`), the
    /// inverse of [`to_flat`](Self::to_flat).
    pub fn from_flat(flat: &Tensor, spec: StateSpec) -> Result<Self> {
        let StateSpec::Lstm { hidden } = spec;
        if flat.dim(1)? != spec.width() {
            candle_core::bail!("flat states hold {} values per row; {spec} needs {}", flat.dim(1)?, spec.width());
        }
        Ok(Self {
            h: flat.narrow(1, 0, hidden)?,
            c: flat.narrow(1, hidden, hidden)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn flat_rows_hold_h_then_c_and_round_trip() {
        let device = Device::Cpu;
        let state = RecurrentState {
            h: Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &device).unwrap(),
            c: Tensor::new(&[[-1f32, -2.0], [-3.0, -4.0]], &device).unwrap(),
        };
        let flat = state.to_flat().unwrap();
        assert_eq!(flat.to_vec2::<f32>().unwrap(), [[1.0, 2.0, -1.0, -2.0], [3.0, 4.0, -3.0, -4.0]]);
        let back = RecurrentState::from_flat(&flat, StateSpec::Lstm { hidden: 2 }).unwrap();
        assert_eq!(back.h.to_vec2::<f32>().unwrap(), state.h.to_vec2::<f32>().unwrap());
        assert_eq!(back.c.to_vec2::<f32>().unwrap(), state.c.to_vec2::<f32>().unwrap());
        assert!(RecurrentState::from_flat(&flat, StateSpec::Lstm { hidden: 3 }).is_err());
    }
}
