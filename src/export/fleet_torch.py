"""A fleet policy as a PyTorch module.

`fleet export RUN --format torch -o DIR` writes this file into DIR beside
`architecture.json` (the network's shape, the observations it reads and the
actions) and `policy.safetensors` (the learner's weights, as fleet saved
them). It needs only `torch` and `safetensors`:

    import sys; sys.path.insert(0, DIR)
    import fleet_torch
    model = fleet_torch.load(DIR)
    output, value = model(obs)                         # feed-forward
    output, value, state = model(obs, is_first, state) # LSTM core, one step
    action = model.act(obs)                            # as `fleet eval --greedy`

The module computes what fleet's `agent::network::ActorCritic` computes, with
the same parameter names (its `state_dict` keys are the tensor names in
`policy.safetensors`, loaded strictly), so that fleet's parity test can hold
the two to within float rounding:

- observations are what fleet's actors feed the network: f32 vectors, or u8
  frames channels first (`[C, H, W]`, C = stacked frames x colour channels),
  given as 0..255 intensities and scaled by 1/255 inside the network;
  anything the environment wrapper does before that (frame stacking,
  `env.normalize_observations`) is the caller's to do;
- `mlp`: with no core, two towers of Linear + activation (`policy_tower.*`
  and `value_tower.*`), one under each head; with an LSTM core one tower;
- `shallow_cnn` / `deep_resnet`: IMPALA's torsos, ReLU throughout, ending in
  a Linear of 256 and ReLU, shared by both heads;
- `nature_cnn`: DQN's network, conv 32x8x8 stride 4, conv 64x4x4 stride 2,
  conv 64x3x3 stride 1, Linear 512, ReLU after each, shared by both heads;
- `small_cnn`: MinAtar's network, conv 16x3x3 stride 1, ReLU, Linear 128,
  ReLU, shared by both heads;
- `lstm`: gates `[i, f, g, o] = input(x) + recurrent(h)` (torch.nn.LSTMCell's
  order and equations), its state zeroed where `is_first` is set, before the
  step;
- heads: `policy` and `value` (one value per observation, returned without
  its last axis of 1). For discrete actions the policy's output is `A`
  logits; for continuous ones (a diagonal Gaussian over `D` dimensions) it
  is the policy parameters, `D` means then `D` log standard deviations
  clamped to `log_std_range`, the deviations being the parameter
  `policy.log_std` (`log_std = "parameter"`) or the head's second `D`
  outputs (`"state_dependent"`).

Shapes: `forward` takes a batch `[N, *observation_shape]` (or observations
flattened to `[N, size]`; a feed-forward network takes any leading batch
axes) and returns the policy's output `[N, W]` (`W` = `A`, or `2·D`) and
values `[N]`. `unroll` takes a time-major sequence `[T, B, ...]` with
`is_first` `[T, B]` and returns `[T, B, W]`, `[T, B]` and the state after
the last step.

Actions: `greedy_action(output)` is what `fleet eval --greedy` acts with,
the index of the first largest logit or the means (through tanh when the
policy squashes), and `act(obs, ...)` runs the network and returns it.
Continuous actions are normalised, in `[-1, 1]` where the environment is
concerned: `env_action(action)` clips them there and maps them into the
environment's bounds as fleet does.
"""

import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

FORMAT = "fleet-policy"
FORMAT_VERSION = 2
# Version 1 had discrete actions only, as `num_actions`.
READABLE_VERSIONS = (1, 2)
ARCHITECTURE_FILE = "architecture.json"


class PolicyLoadError(RuntimeError):
    """An export folder that cannot be loaded, naming the file at fault."""


def load(path, device="cpu"):
    """The policy exported to `path` (a folder), with its weights, in
    evaluation mode on `device`."""
    architecture_path = os.path.join(path, ARCHITECTURE_FILE)
    try:
        with open(architecture_path, encoding="utf-8") as f:
            architecture = json.load(f)
    except (OSError, ValueError) as error:
        raise PolicyLoadError(f"{architecture_path}: {error}") from error
    if architecture.get("format") != FORMAT or architecture.get("format_version") not in READABLE_VERSIONS:
        raise PolicyLoadError(
            f"{architecture_path}: format {architecture.get('format')!r} version "
            f"{architecture.get('format_version')!r}; this module reads {FORMAT!r} versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    model = FleetPolicy(architecture)
    weights_path = os.path.join(path, architecture["weights_file"])
    try:
        tensors = load_file(weights_path)
    except Exception as error:  # safetensors raises its own error types
        raise PolicyLoadError(f"{weights_path}: {error}") from error
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise PolicyLoadError(f"{weights_path}: {error}") from error
    return model.to(device).eval()


def _linear(fan_in, fan_out):
    return nn.Linear(fan_in, fan_out)


def _activation(name):
    if name == "tanh":
        return torch.tanh
    if name == "relu":
        return torch.relu
    raise ValueError(f"unknown activation {name!r}")


class ShallowTorso(nn.Module):
    """IMPALA's shallow model: conv 16x8x8 stride 4, ReLU, conv 32x4x4
    stride 2, ReLU, Linear 256, ReLU."""

    def __init__(self, channels, height, width, frame_scale):
        super().__init__()
        self.frame_scale = frame_scale
        self.conv0 = nn.Conv2d(channels, 16, 8, stride=4)
        self.conv1 = nn.Conv2d(16, 32, 4, stride=2)
        h = ((height - 8) // 4 + 1 - 4) // 2 + 1
        w = ((width - 8) // 4 + 1 - 4) // 2 + 1
        self.fc = _linear(32 * h * w, 256)

    def forward(self, x):
        # fleet folds the 1/255 into the first convolution's weight.
        x = F.conv2d(x, self.conv0.weight * self.frame_scale, self.conv0.bias, stride=4)
        x = torch.relu(self.conv1(torch.relu(x)))
        return torch.relu(self.fc(x.flatten(1)))


class NatureTorso(nn.Module):
    """DQN's network (Mnih et al. 2015): conv 32x8x8 stride 4, ReLU, conv
    64x4x4 stride 2, ReLU, conv 64x3x3 stride 1, ReLU, Linear 512, ReLU."""

    def __init__(self, channels, height, width, frame_scale):
        super().__init__()
        self.frame_scale = frame_scale
        self.conv0 = nn.Conv2d(channels, 32, 8, stride=4)
        self.conv1 = nn.Conv2d(32, 64, 4, stride=2)
        self.conv2 = nn.Conv2d(64, 64, 3)
        h = (((height - 8) // 4 + 1 - 4) // 2 + 1) - 2
        w = (((width - 8) // 4 + 1 - 4) // 2 + 1) - 2
        self.fc = _linear(64 * h * w, 512)

    def forward(self, x):
        # fleet folds the 1/255 into the first convolution's weight.
        x = torch.relu(F.conv2d(x, self.conv0.weight * self.frame_scale, self.conv0.bias, stride=4))
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(self.fc(x.flatten(1)))


class SmallTorso(nn.Module):
    """MinAtar's network: conv 16x3x3 stride 1, ReLU, Linear 128, ReLU."""

    def __init__(self, channels, height, width, frame_scale):
        super().__init__()
        self.frame_scale = frame_scale
        self.conv0 = nn.Conv2d(channels, 16, 3)
        self.fc = _linear(16 * (height - 2) * (width - 2), 128)

    def forward(self, x):
        # fleet folds the 1/255 into the convolution's weight.
        x = torch.relu(F.conv2d(x, self.conv0.weight * self.frame_scale, self.conv0.bias))
        return torch.relu(self.fc(x.flatten(1)))


class ResidualBlock(nn.Module):
    """x + conv1(relu(conv0(relu(x)))), 3x3 same-padded."""

    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ResidualSection(nn.Module):
    """A 3x3 conv, a 3x3 stride-2 max-pool (padding 1), two residual blocks."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.block0 = ResidualBlock(c_out)
        self.block1 = ResidualBlock(c_out)

    def forward(self, x, scale=None):
        if scale is None:
            x = self.conv(x)
        else:
            x = F.conv2d(x, self.conv.weight * scale, self.conv.bias, padding=1)
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        return self.block1(self.block0(x))


class DeepTorso(nn.Module):
    """IMPALA's deep model: sections of 16, 32, 32 channels, ReLU, Linear
    256, ReLU."""

    def __init__(self, channels, height, width, frame_scale):
        super().__init__()
        self.frame_scale = frame_scale
        self.section0 = ResidualSection(channels, 16)
        self.section1 = ResidualSection(16, 32)
        self.section2 = ResidualSection(32, 32)
        for _ in range(3):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        self.fc = _linear(32 * height * width, 256)

    def forward(self, x):
        x = self.section0(x, scale=self.frame_scale)
        x = self.section2(self.section1(x))
        return torch.relu(self.fc(torch.relu(x).flatten(1)))


# Each convolutional torso's module and the width of its features.
CONV_TORSOS = {
    "shallow_cnn": (ShallowTorso, 256),
    "deep_resnet": (DeepTorso, 256),
    "nature_cnn": (NatureTorso, 512),
    "small_cnn": (SmallTorso, 128),
}


class LstmCore(nn.Module):
    """One LSTM layer: `input` (x to the four gates) and `recurrent` (h to
    the four gates), gates in the order i, f, g, o."""

    def __init__(self, input_width, size):
        super().__init__()
        self.size = size
        self.input = _linear(input_width, 4 * size)
        self.recurrent = _linear(size, 4 * size)

    def step_projected(self, projected, h, c):
        gates = projected + self.recurrent(h)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class FleetPolicy(nn.Module):
    """fleet's actor-critic network for one `architecture.json`."""

    def __init__(self, architecture):
        super().__init__()
        self.architecture = architecture
        network = architecture["network"]
        observation = architecture["observation"]
        self.observation_shape = tuple(observation["shape"])
        self.observation_size = math.prod(self.observation_shape)
        self.frames = observation["dtype"] == "u8"
        self.frame_scale = float(architecture["frame_scale"])
        action = architecture.get("action") or {"kind": "discrete", "num_actions": architecture["num_actions"]}
        self.action_kind = action["kind"]
        if self.action_kind == "discrete":
            # The number of logits; None for continuous actions.
            self.num_actions = int(action["num_actions"])
            self.action_dims = None
            self.output_width = head_outputs = self.num_actions
        elif self.action_kind == "continuous":
            self.num_actions = None
            self.action_dims = dims = int(action["dims"])
            self.log_std_kind = action["log_std"]
            self.log_std_range = tuple(float(v) for v in action["log_std_range"])
            self.squash = bool(action["squash"])
            bounds = action.get("bounds")
            self.action_low = None if bounds is None else torch.tensor(bounds["low"], dtype=torch.float32)
            self.action_high = None if bounds is None else torch.tensor(bounds["high"], dtype=torch.float32)
            if self.log_std_kind == "parameter":
                head_outputs = dims
            elif self.log_std_kind == "state_dependent":
                head_outputs = 2 * dims
            else:
                raise ValueError(f"unknown log_std {self.log_std_kind!r}")
            self.output_width = 2 * dims
        else:
            raise ValueError(f"unknown action kind {self.action_kind!r}")
        self.torso_kind = network["torso"]
        self.core_kind = network["core"]
        self.activation = _activation(network["activation"])
        if self.core_kind not in ("none", "lstm"):
            raise ValueError(f"unknown core {self.core_kind!r}")

        if self.torso_kind == "mlp":
            self.policy_tower, width = self._tower(network["hidden"])
            if self.core_kind == "none":
                self.value_tower, value_width = self._tower(network["hidden"])
            else:
                value_width = width
        elif self.torso_kind in CONV_TORSOS:
            if not self.frames:
                raise ValueError(f"torso {self.torso_kind!r} needs frames, not {observation}")
            torso, width = CONV_TORSOS[self.torso_kind]
            self.torso = torso(*self.observation_shape, self.frame_scale)
            value_width = width
        else:
            raise ValueError(f"unknown torso {self.torso_kind!r}")

        if self.core_kind == "lstm":
            self.lstm = LstmCore(width, int(network["lstm_size"]))
            width = value_width = self.lstm.size
        self.policy = _linear(width, head_outputs)
        if self.action_kind == "continuous" and self.log_std_kind == "parameter":
            # Registered on the head, so that its name is `policy.log_std`.
            self.policy.log_std = nn.Parameter(torch.zeros(self.action_dims))
        self.value = _linear(value_width, 1)

    def _tower(self, hidden):
        layers, width = nn.ModuleList(), self.observation_size
        for out in hidden:
            layers.append(_linear(width, out))
            width = out
        return layers, width

    @property
    def recurrent(self):
        """Whether the network carries a state `(h, c)` between steps."""
        return self.core_kind == "lstm"

    def initial_state(self, batch_size, device=None):
        """The zero state `(h, c)` for `batch_size` environments."""
        size = self.lstm.size if self.recurrent else 0
        device = device or self.policy.weight.device
        zeros = torch.zeros(batch_size, size, dtype=torch.float32, device=device)
        return zeros, zeros.clone()

    def _flat(self, obs):
        """Observations as fleet's network reads them: f32 `[N, size]`, and
        the batch axes they came with."""
        x = torch.as_tensor(obs, device=self.policy.weight.device).to(torch.float32)
        rank = len(self.observation_shape)
        if tuple(x.shape[x.dim() - rank :]) == self.observation_shape and x.dim() > rank:
            batch = tuple(x.shape[: x.dim() - rank])
        elif x.dim() >= 2 and x.shape[-1] == self.observation_size:
            batch = tuple(x.shape[:-1])
        else:
            expected = f"[batch..., {', '.join(map(str, self.observation_shape))}]"
            if rank > 1:
                expected += f" or [batch..., {self.observation_size}]"
            raise ValueError(f"observations of shape {tuple(x.shape)}: expected {expected}")
        return x.reshape(-1, self.observation_size), batch

    def _features(self, x):
        """The torso's output for flat observations `[N, size]`: the policy's
        features and the value's (the same tensor but for the MLP's two
        towers)."""
        if self.torso_kind == "mlp":
            if self.frames:
                x = x * self.frame_scale
            policy = x
            for layer in self.policy_tower:
                policy = self.activation(layer(policy))
            if self.recurrent:
                return policy, policy
            value = x
            for layer in self.value_tower:
                value = self.activation(layer(value))
            return policy, value
        frames = x.reshape(-1, *self.observation_shape)
        features = self.torso(frames)
        return features, features

    @property
    def continuous(self):
        """Whether the actions are continuous (the policy a Gaussian)."""
        return self.action_kind == "continuous"

    def _heads(self, policy_features, value_features):
        head = self.policy(policy_features)
        if self.continuous:
            low, high = self.log_std_range
            dims = self.action_dims
            if self.log_std_kind == "parameter":
                log_std = self.policy.log_std.clamp(low, high).expand(head.shape[0], dims)
                head = torch.cat([head, log_std], -1)
            else:
                head = torch.cat([head[:, :dims], head[:, dims:].clamp(low, high)], -1)
        return head, self.value(value_features).squeeze(-1)

    def greedy_action(self, output):
        """The action `fleet eval --greedy` takes for the policy's output
        `[..., W]`: the index (int64) of the first largest logit (NaN never
        wins), or the means `[..., D]`, through tanh when the policy
        squashes. Continuous actions are normalised: see `env_action`."""
        output = torch.as_tensor(output)
        if not self.continuous:
            return torch.nan_to_num(output, nan=-math.inf).argmax(-1)
        means = output[..., : self.action_dims]
        return torch.tanh(means) if self.squash else means

    def act(self, obs, is_first=None, state=None):
        """`greedy_action` of the network's output for `obs`, without
        gradients. Feed-forward: the actions; with the LSTM core (one step,
        arguments as `forward`'s): the actions and the state after it."""
        with torch.no_grad():
            if self.recurrent:
                output, _, state = self(obs, is_first, state)
                return self.greedy_action(output), state
            output, _ = self(obs)
            return self.greedy_action(output)

    def env_action(self, action, low=None, high=None):
        """Normalised continuous actions `[..., D]` in the environment's
        units, as fleet hands them to it: clipped to [-1, 1], then mapped
        linearly onto `[low, high]` per dimension (the bounds recorded in
        `architecture.json` unless given; a bridged environment's are not
        recorded). Discrete actions are returned as they are."""
        if not self.continuous:
            return action
        low = self.action_low if low is None else torch.as_tensor(low, dtype=torch.float32)
        high = self.action_high if high is None else torch.as_tensor(high, dtype=torch.float32)
        if low is None or high is None:
            raise ValueError("the export does not record the action bounds: pass low and high (the env's action space)")
        action = torch.as_tensor(action).to(torch.float32)
        low, high = low.to(action.device), high.to(action.device)
        unit = (action.clamp(-1.0, 1.0) + 1.0) * 0.5
        return low + unit * (high - low)

    def forward(self, obs, is_first=None, state=None):
        """One step. Feed-forward: `(output, value)` (the policy's output,
        logits or Gaussian parameters, and the values) for observations with
        any leading batch axes. With the LSTM core: observations `[B, ...]`,
        `is_first` `[B]` (true where an episode starts: the state is zeroed
        before the step; default none), `state` `(h, c)` each `[B,
        lstm_size]` (default zeros); returns `(output, value, state)`."""
        x, batch = self._flat(obs)
        if not self.recurrent:
            output, value = self._heads(*self._features(x))
            return output.reshape(*batch, self.output_width), value.reshape(batch)
        if len(batch) != 1:
            raise ValueError(f"one LSTM step takes observations [B, ...], got batch axes {batch}; use unroll for [T, B, ...]")
        output, value, state = self._unroll(x, is_first, state, 1, batch[0])
        return output, value, state

    def unroll(self, obs, is_first=None, state=None):
        """`T` steps of `B` environments, time-major: observations `[T, B,
        ...]`, `is_first` `[T, B]`, `state` before the first step. Returns
        outputs `[T, B, W]`, values `[T, B]` and the state after the last
        step (a feed-forward network returns the state it was given)."""
        x, batch = self._flat(obs)
        if len(batch) != 2:
            raise ValueError(f"unroll takes observations [T, B, ...], got batch axes {batch}")
        steps, b = batch
        if not self.recurrent:
            output, value = self._heads(*self._features(x))
            return output.reshape(steps, b, self.output_width), value.reshape(steps, b), state
        output, value, state = self._unroll(x, is_first, state, steps, b)
        return output.reshape(steps, b, self.output_width), value.reshape(steps, b), state

    def _unroll(self, x, is_first, state, steps, b):
        """fleet's `ActorCritic::unroll` on flat time-major rows `[T*B, size]`."""
        device = x.device
        if state is None:
            state = self.initial_state(b, device)
        h, c = (torch.as_tensor(s, device=device).to(torch.float32) for s in state)
        if is_first is None:
            keep = torch.ones(steps * b, 1, device=device)
        else:
            keep = 1.0 - torch.as_tensor(is_first, device=device).to(torch.float32).reshape(steps * b, 1)
        features, _ = self._features(x)
        projected = self.lstm.input(features)
        hs = []
        for t in range(steps):
            rows = slice(t * b, (t + 1) * b)
            h, c = h * keep[rows], c * keep[rows]
            h, c = self.lstm.step_projected(projected[rows], h, c)
            hs.append(h)
        h_all = torch.cat(hs, 0)
        output, value = self._heads(h_all, h_all)
        return output, value, (h, c)
