//! The LSTM core: [`RecurrentState`], the `(h, c)` each environment
//! carries between steps, and one LSTM layer that unrolls it over steps in
//! the kernels crate's fused op. Which rows reset, and where, is the
//! network's business (`mod.rs`).

use candle_core::{Device, Result, Tensor};
use fleet_kernels::{bias, lstm};
use rand::Rng;

use super::mlp::{Dense, NamedVars};

/// An LSTM's state for `N` environments: `h` and `c`, each `[N, lstm_size]`.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    pub h: Tensor,
    pub c: Tensor,
}

impl RecurrentState {
    /// The same state cut off from the graph: no gradient flows into it.
    pub fn detach(&self) -> Self {
        Self {
            h: self.h.detach(),
            c: self.c.detach(),
        }
    }
}

/// How an LSTM layer's gate biases start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum GateInit {
    /// The forget gate's bias at this value, the others at 0.
    ForgetBias(f64),
    /// Chrono initialisation: unit k's forget bias ln(u_k), u_k uniform in
    /// [1, horizon − 1], and its input bias −ln(u_k); the others at 0.
    Chrono { horizon: u32 },
}

impl GateInit {
    /// The starting biases of the `[i, f, g, o]` gate blocks, or `None`
    /// where they all stay 0.
    fn biases(self, size: usize, rng: &mut impl Rng) -> Option<Vec<f32>> {
        let mut bias = vec![0.0f32; 4 * size];
        let (input_gate, forget_gate) = bias.split_at_mut(size);
        match self {
            Self::ForgetBias(b) => {
                if b == 0.0 {
                    return None;
                }
                forget_gate[..size].fill(b as f32);
            }
            Self::Chrono { horizon } => {
                for (i, f) in input_gate.iter_mut().zip(&mut forget_gate[..size]) {
                    let span: f64 = rng.random_range(1.0..=f64::from(horizon - 1));
                    *f = span.ln() as f32;
                    *i = -*f;
                }
            }
        }
        Some(bias)
    }
}

/// One LSTM layer: gates `[i, f, g, o] = x W_ihᵀ + h W_hhᵀ + b`.
#[derive(Debug)]
pub(super) struct LstmCell {
    input: Dense,
    recurrent: Dense,
    /// Width of `h` and `c`.
    pub(super) size: usize,
}

impl LstmCell {
    /// A layer over inputs of `input_width` values, its parameters named
    /// `lstm.input.*` and `lstm.recurrent.*` and appended to `params`, its
    /// gate biases set by `init`.
    pub(super) fn new(
        input_width: usize,
        size: usize,
        init: GateInit,
        rng: &mut impl Rng,
        device: &Device,
        params: &mut NamedVars,
    ) -> Result<Self> {
        let (input, named) = Dense::new("lstm.input", input_width, 4 * size, 1.0, rng, device)?;
        params.extend(named);
        if let Some(bias) = init.biases(size, rng) {
            input.bias.set(&Tensor::from_vec(bias, 4 * size, device)?)?;
        }
        let (recurrent, named) = Dense::new("lstm.recurrent", size, 4 * size, 1.0, rng, device)?;
        params.extend(named);
        Ok(Self { input, recurrent, size })
    }

    /// The gates' input part, `x W_ihᵀ + b_ih`, for any number of rows: an
    /// unroll projects all its steps in one matrix product.
    pub(super) fn project(&self, x: &Tensor) -> Result<Tensor> {
        self.input.forward(x)
    }

    /// `steps` steps of `B` rows from their [`LstmCell::project`]ion
    /// (`[T·B, 4H]`, time-major) and `state`, each row's state reset to zero
    /// before the steps where `keep` is 0. Returns every step's state,
    /// stacked, and the state after the last step.
    pub(super) fn unroll(
        &self,
        projected: &Tensor,
        keep: &[f32],
        steps: usize,
        state: &RecurrentState,
    ) -> Result<(RecurrentState, RecurrentState)> {
        let projected = bias::add_bias(projected, self.recurrent.bias.as_tensor(), 1)?;
        let start = Tensor::cat(&[&state.h, &state.c], 1)?;
        let hc = lstm::lstm_unroll(&projected, self.recurrent.weight(), &start, keep, steps)?;
        let split = |hc: &Tensor| -> Result<RecurrentState> {
            Ok(RecurrentState {
                h: hc.narrow(1, 0, self.size)?,
                c: hc.narrow(1, self.size, self.size)?,
            })
        };
        let batch = state.h.dim(0)?;
        Ok((split(&hc)?, split(&hc.narrow(0, (steps - 1) * batch, batch)?)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::EnvSpec;
    use crate::network::{ActorCritic, Core, NetworkConfig};

    const SPEC: EnvSpec = EnvSpec::vector(4, 2);

    fn lstm() -> ActorCritic {
        let config = NetworkConfig {
            hidden: vec![16],
            core: Core::Lstm,
            lstm_size: 8,
            ..NetworkConfig::default()
        };
        ActorCritic::new(SPEC, &config, 3, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    /// `[T·B, 4]` observations that differ by step and sequence.
    fn observations(steps: usize, b: usize) -> Tensor {
        let v: Vec<f32> = (0..steps * b * 4).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.2).collect();
        Tensor::from_vec(v, (steps * b, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn unrolling_equals_stepping_and_resets_where_episodes_start() {
        let net = lstm();
        let (steps, b) = (6, 2);
        let obs = observations(steps, b);
        // Sequence 1 starts a new episode at step 3.
        let mut first = vec![0f32; steps * b];
        first[3 * b + 1] = 1.0;
        let is_first = Tensor::from_vec(first.clone(), steps * b, &Device::Cpu).unwrap();
        let start = RecurrentState {
            h: Tensor::full(0.3f32, (b, 8), &Device::Cpu).unwrap(),
            c: Tensor::full(-0.2f32, (b, 8), &Device::Cpu).unwrap(),
        };
        let (unrolled, end) = net.unroll(&obs, &is_first, steps, &start).unwrap();

        let mut state = start.clone();
        let mut logits = Vec::new();
        for t in 0..steps {
            let (out, next) = net
                .step(&obs.narrow(0, t * b, b).unwrap(), &is_first.narrow(0, t * b, b).unwrap(), &state)
                .unwrap();
            logits.extend(values(&out.logits));
            state = next;
        }
        assert!(close(&values(&unrolled.logits), &logits));
        assert!(close(&values(&end.h), &values(&state.h)));

        // From the reset on, sequence 1 is what a fresh start there gives.
        let rows = |t0: usize| -> Vec<usize> { (t0..steps).map(|t| t * b + 1).collect() };
        let tail: Vec<u32> = rows(3).iter().map(|&r| r as u32).collect();
        let tail_obs = obs.index_select(&Tensor::new(tail.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
        let fresh_first = Tensor::zeros(steps - 3, DType::F32, &Device::Cpu).unwrap();
        let (fresh, _) = net
            .unroll(&tail_obs, &fresh_first, steps - 3, &net.initial_state(1).unwrap())
            .unwrap();
        let all = values(&unrolled.logits);
        let reset_rows: Vec<f32> = rows(3).iter().flat_map(|&r| all[r * 2..r * 2 + 2].to_vec()).collect();
        assert!(
            close(&reset_rows, &values(&fresh.logits)),
            "a reset inside the unroll starts from the zero state"
        );
        // Before the reset, the carried state mattered.
        let (from_zero, _) = net.unroll(&obs, &is_first, steps, &net.initial_state(b).unwrap()).unwrap();
        assert!(!close(&values(&from_zero.logits)[2..4], &all[2..4]));
    }

    #[test]
    fn the_forget_bias_sets_only_the_forget_gate_block() {
        let config = NetworkConfig {
            hidden: vec![16],
            core: Core::Lstm,
            lstm_size: 8,
            lstm_forget_bias: 1.0,
            ..NetworkConfig::default()
        };
        let net = ActorCritic::new(SPEC, &config, 3, &Device::Cpu).unwrap();
        let bias = net.params().iter().find(|(name, _)| name == "lstm.input.bias").unwrap();
        let bias = values(bias.1.as_tensor());
        let expected: Vec<f32> = (0..32).map(|k| if (8..16).contains(&k) { 1.0 } else { 0.0 }).collect();
        assert_eq!(bias, expected);
        // The rest of the initialisation is the same as without the bias.
        let plain = lstm();
        let weight = |net: &ActorCritic| values(net.params().iter().find(|(n, _)| n == "lstm.input.weight").unwrap().1.as_tensor());
        assert_eq!(weight(&net), weight(&plain));
        let bad = NetworkConfig {
            lstm_forget_bias: f64::NAN,
            ..config
        };
        assert!(bad.validate().unwrap_err().contains("network.lstm_forget_bias"));
    }

    #[test]
    fn chrono_spreads_forget_biases_over_the_horizon_and_closes_the_input_gate_to_match() {
        let config = NetworkConfig {
            hidden: vec![16],
            core: Core::Lstm,
            lstm_size: 64,
            lstm_forget_bias: 1.0,
            lstm_chrono_horizon: 100,
            ..NetworkConfig::default()
        };
        let net = ActorCritic::new(SPEC, &config, 3, &Device::Cpu).unwrap();
        let bias = net.params().iter().find(|(name, _)| name == "lstm.input.bias").unwrap();
        let bias = values(bias.1.as_tensor());
        let (input, forget, rest) = (&bias[..64], &bias[64..128], &bias[128..]);
        // ln(1) = 0 up to ln(99): the spans 1..99 steps, not the fixed bias.
        assert!(forget.iter().all(|&b| (0.0..=99f32.ln() + 1e-6).contains(&b)), "{forget:?}");
        assert!(forget.iter().any(|&b| b > 3.0) && forget.iter().any(|&b| b < 2.0), "{forget:?}");
        assert!(input.iter().zip(forget).all(|(i, f)| *i == -*f));
        assert!(rest.iter().all(|&b| b == 0.0));
        for horizon in [1, 2] {
            let bad = NetworkConfig {
                lstm_chrono_horizon: horizon,
                ..config.clone()
            };
            assert!(bad.validate().unwrap_err().contains("network.lstm_chrono_horizon"));
        }
    }

    #[test]
    fn a_recurrent_network_refuses_stateless_forward_and_names_its_lstm() {
        let net = lstm();
        assert!(net.forward(&observations(1, 1)).is_err());
        let names: Vec<&str> = net.params().iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"lstm.input.weight") && names.contains(&"lstm.recurrent.weight"),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with("value_tower")));
        let state = net.initial_state(2).unwrap();
        assert_eq!((state.h.dims(), state.c.dims()), (&[2, 8][..], &[2, 8][..]));
    }
}
