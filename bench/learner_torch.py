"""The `fleet bench learner` workloads in PyTorch (CPU, float32).

One update does what fleet's learner does on one batch (learner/src/loss.rs,
vtrace.rs, batch.rs): the network over every step of a time-major batch
(`[L, B, ...]`, L = unroll + 1), V-trace targets and policy-gradient
advantages from the detached values (rho_bar = c_bar = 1, lambda = 1,
discount 0.99, per-step discounts zeroed where the next observation ends an
episode by termination, a mask that drops steps whose observation is the
last of an episode), the IMPALA loss averaged over the real decisions and
weighted by per-sequence importance weights (all 1), backward, global
grad-norm clip 40 and an Adam step (lr 5e-4).

Workloads (batch 32 sequences, unroll 20):
  mlp               CartPole: obs 4, 2 actions, separate policy and value
                    towers of 64-64 tanh.
  shallow_cnn       IMPALA's shallow CNN on 84x84x4 u8 frames (scaled by
                    1/255 inside the update), one shared torso, 6 actions.
  shallow_cnn_lstm  the same torso, an LSTM(256) core and 20 burn-in steps
                    (no gradient, from a stored state per sequence).
  deep_resnet       IMPALA's deep torso on the same frames: three sections
                    of 16, 32, 32 channels (conv 3x3, max-pool 3x3/2 padded
                    1, two residual blocks of ReLU-conv-ReLU-conv), ReLU,
                    FC 256, ReLU; 6 actions.
  nature_cnn        DQN's network on the same frames: conv 32 8x8/4, conv
                    64 4x4/2, conv 64 3x3/1 (ReLU after each), FC 512,
                    ReLU; 6 actions.
  shallow_cnn_nn_lstm  (with --reference) as above but through nn.LSTM with
                    no resets at episode starts: what the fused module gives,
                    not the same work.

frames/s counts what fleet counts: learning steps that are real decisions
(not the last observation of an episode; burn-in and bootstrap steps are
not counted), times updates/s.

Run through bench/learner_vs_torch.sh, which installs PyTorch into a venv.
"""

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

BATCH = 32
UNROLL = 20
BURN_IN = 20
DISCOUNT = 0.99
BASELINE_COST = 0.5
ENTROPY_COST = 0.01
CLIP_NORM = 40.0
LR = 5e-4
FRAME = (4, 84, 84)
ATARI_ACTIONS = 6
LSTM_SIZE = 256


def dense(fan_in, fan_out, gain=1.0):
    # As fleet's Dense: uniform in +-gain/sqrt(fan_in), zero bias.
    layer = nn.Linear(fan_in, fan_out)
    bound = gain / fan_in**0.5
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.zeros_(layer.bias)
    return layer


class Mlp(nn.Module):
    recurrent = False

    def __init__(self, obs=4, actions=2, hidden=(64, 64)):
        super().__init__()

        def tower():
            layers, width = [], obs
            for out in hidden:
                layers += [dense(width, out), nn.Tanh()]
                width = out
            return nn.Sequential(*layers), width

        self.policy_tower, width = tower()
        self.value_tower, _ = tower()
        self.policy = dense(width, actions, 0.01)
        self.value = dense(width, 1)

    def forward(self, obs):
        return self.policy(self.policy_tower(obs)), self.value(self.value_tower(obs)).squeeze(-1)


class PlainTorso(nn.Module):
    """Unpadded convolutions, each (out channels, kernel, stride) followed by
    a ReLU, then flatten, FC, ReLU: fleet's plain stacks
    (agent/src/network/cnn.rs)."""

    def __init__(self, convs, features):
        super().__init__()
        layers, channels, side = [], FRAME[0], FRAME[1]
        for out_channels, kernel, stride in convs:
            layers.append(nn.Conv2d(channels, out_channels, kernel, stride=stride))
            channels, side = out_channels, (side - kernel) // stride + 1
        self.convs = nn.ModuleList(layers)
        self.fc = nn.Linear(channels * side * side, features)
        self.features = features

    def forward(self, frames):
        x = frames.float().mul_(1.0 / 255.0)
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.relu(self.fc(x.flatten(1)))


def shallow_torso():
    """IMPALA's shallow CNN: conv 16 8x8/4, conv 32 4x4/2, FC 256."""
    return PlainTorso([(16, 8, 4), (32, 4, 2)], 256)


def nature_torso():
    """DQN's network, as fleet's `nature_cnn`: conv 32 8x8/4, conv 64
    4x4/2, conv 64 3x3/1, FC 512."""
    return PlainTorso([(32, 8, 4), (64, 4, 2), (64, 3, 1)], 512)


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class DeepTorso(nn.Module):
    """IMPALA's deep torso, as fleet's `deep_resnet` (agent/src/network/cnn.rs).

    Not src/export/fleet_torch.py's DeepTorso: with the same layers, that
    form (the frame scale folded into the first convolution's weights on
    every forward) made this update 1.25x slower, and the peer is measured
    at its fastest."""

    features = 256

    def __init__(self):
        super().__init__()
        sections, c_in = [], FRAME[0]
        for c_out in (16, 32, 32):
            sections += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                ResidualBlock(c_out),
                ResidualBlock(c_out),
            ]
            c_in = c_out
        self.sections = nn.Sequential(*sections)
        self.fc = nn.Linear(32 * 11 * 11, 256)

    def forward(self, frames):
        x = frames.float().mul_(1.0 / 255.0)
        x = F.relu(self.sections(x))
        return F.relu(self.fc(x.flatten(1)))


class ShallowCnn(nn.Module):
    """A convolutional torso shared by the policy and value heads."""

    recurrent = False

    def __init__(self, actions=ATARI_ACTIONS, torso=shallow_torso):
        super().__init__()
        self.torso = torso()
        self.policy = dense(self.torso.features, actions, 0.01)
        self.value = dense(self.torso.features, 1)

    def forward(self, frames):
        x = self.torso(frames)
        return self.policy(x), self.value(x).squeeze(-1)


class ShallowCnnLstm(nn.Module):
    """Torso, LSTM(256) core reset where an episode starts, heads on h.

    The resets fall inside sequences, so the core runs as a per-step
    nn.LSTMCell loop with the state zeroed by `is_first` before each step
    (fleet's form); nn.LSTM would run the whole unroll in one call but cannot
    reset mid-sequence. The torso runs on all steps at once.
    """

    recurrent = True

    def __init__(self, actions=ATARI_ACTIONS, fused=False):
        super().__init__()
        self.torso = shallow_torso()
        self.fused = fused
        self.core = nn.LSTM(256, LSTM_SIZE) if fused else nn.LSTMCell(256, LSTM_SIZE)
        self.policy = dense(LSTM_SIZE, actions, 0.01)
        self.value = dense(LSTM_SIZE, 1)

    def unroll(self, frames, is_first, state):
        """frames `[L, B, ...]` u8, is_first `[L, B]` f32, state (h, c) each
        `[B, 256]`; returns logits `[L, B, A]`, values `[L, B]`, final state."""
        steps, b = is_first.shape
        features = self.torso(frames.flatten(0, 1)).view(steps, b, -1)
        if self.fused:
            h, c = state
            out, (h, c) = self.core(features, (h.unsqueeze(0), c.unsqueeze(0)))
            state = (h.squeeze(0), c.squeeze(0))
        else:
            keep = (1.0 - is_first).unsqueeze(-1)
            h, c = state
            outs = []
            for t in range(steps):
                h, c = self.core(features[t], (h * keep[t], c * keep[t]))
                outs.append(h)
            out = torch.stack(outs)
            state = (h, c)
        return self.policy(out), self.value(out).squeeze(-1), state


def make_batch(kind, seed=0):
    """A synthetic batch as fleet's HostBatch::synthetic draws it: random
    observations, actions and behaviour logits, reward 1 per step (0 on the
    last observation of an episode), episode ends by termination (p = 0.03)
    and truncation (p = 0.01), and the device-side fields DeviceBatch::new
    derives from them for the steps after the burn-in."""
    g = torch.Generator().manual_seed(seed)
    burn_in = BURN_IN if kind == "lstm" else 0
    total = burn_in + UNROLL + 1
    shape = (total, BATCH)
    terminated = torch.rand(shape, generator=g) < 0.03
    truncated = ~terminated & (torch.rand(shape, generator=g) < 0.01)
    last = terminated | truncated
    is_first = torch.zeros(shape, dtype=torch.bool)
    is_first[0] = True
    is_first[1:] = last[:-1]
    if kind == "mlp":
        obs = torch.rand(shape + (4,), generator=g) * 2 - 1
        actions_n = 2
    else:
        obs = torch.randint(0, 256, shape + FRAME, generator=g, dtype=torch.uint8)
        actions_n = ATARI_ACTIONS
    actions = torch.randint(0, actions_n, shape, generator=g)
    behaviour_logits = torch.rand(shape + (actions_n,), generator=g) - 0.5
    rewards = (~last).float()

    s, t = burn_in, UNROLL  # learning steps are s .. s+t-1, bootstrap s+t
    mask = (~last[s : s + t]).float()
    discounts = torch.where(last[s : s + t] | terminated[s + 1 : s + t + 1], 0.0, DISCOUNT)
    batch = {
        "observations": obs[s:],
        "is_first": is_first[s:].float(),
        "actions": actions[s : s + t],
        "rewards": rewards[s : s + t],
        "discounts": discounts,
        "mask": mask,
        "behaviour_logits": behaviour_logits[s : s + t],
        "importance_weights": torch.ones(BATCH),
        "frames": int(mask.sum()),
    }
    if burn_in:
        batch["burn_in_observations"] = obs[:s]
        batch["burn_in_is_first"] = is_first[:s].float()
        batch["initial_h"] = (torch.rand(BATCH, LSTM_SIZE, generator=g) - 0.5) * 0.4
        batch["initial_c"] = (torch.rand(BATCH, LSTM_SIZE, generator=g) - 0.5) * 0.4
    return batch


@torch.no_grad()
def vtrace(log_rhos, discounts, rewards, values, bootstrap, mask):
    """V-trace targets and pg advantages, `[T, B]`, rho_bar = c_bar = 1, lambda = 1."""
    rhos = log_rhos.exp()
    clipped = rhos.clamp(max=1.0)
    clipped_rhos = clipped * mask
    cs = clipped * mask
    values_tp1 = torch.cat([values[1:], bootstrap.unsqueeze(0)])
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)
    decay = discounts * cs
    acc = torch.zeros_like(bootstrap)
    rows = []
    for t in range(log_rhos.shape[0] - 1, -1, -1):
        acc = deltas[t] + decay[t] * acc
        rows.append(acc)
    vs = torch.stack(rows[::-1]) + values
    vs_tp1 = torch.cat([vs[1:], bootstrap.unsqueeze(0)])
    pg_advantages = clipped * (rewards + discounts * vs_tp1 - values) * mask
    decided = mask > 0
    clipped_fraction = ((rhos > 1.0) & decided).float().sum() / decided.float().sum().clamp(min=1.0)
    return vs, pg_advantages, clipped_fraction


def outputs(model, batch):
    """logits `[L, B, A]` and values `[L, B]` on the steps after the burn-in."""
    obs = batch["observations"]
    if not model.recurrent:
        logits, values = model(obs.flatten(0, 1))
        return logits.view(obs.shape[0], BATCH, -1), values.view(obs.shape[0], BATCH)
    state = (batch["initial_h"], batch["initial_c"])
    with torch.no_grad():
        _, _, state = model.unroll(batch["burn_in_observations"], batch["burn_in_is_first"], state)
    logits, values, _ = model.unroll(obs, batch["is_first"], state)
    return logits, values


def update(model, optimizer, batch):
    logits, values = outputs(model, batch)
    t = UNROLL
    log_probs = F.log_softmax(logits[:t], dim=-1)
    actions = batch["actions"].unsqueeze(-1)
    action_log_probs = log_probs.gather(-1, actions).squeeze(-1)
    behaviour_log_probs = F.log_softmax(batch["behaviour_logits"], dim=-1).gather(-1, actions).squeeze(-1)
    log_rhos = action_log_probs.detach() - behaviour_log_probs
    learning_values = values[:t]
    mask = batch["mask"]
    vs, pg_advantages, clipped_fraction = vtrace(
        log_rhos, batch["discounts"], batch["rewards"], learning_values.detach(), values[t].detach(), mask
    )
    step_weights = mask * batch["importance_weights"].unsqueeze(0)
    decisions = max(float(mask.sum()), 1.0)

    def mean(x):
        return (x * step_weights).sum() / decisions

    policy = mean(-(action_log_probs * pg_advantages))
    td = vs - learning_values
    baseline = 0.5 * mean(td.square())
    entropy = mean(-(log_probs.exp() * log_probs).sum(-1))
    total = policy + BASELINE_COST * baseline - ENTROPY_COST * entropy

    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()
    # The scalars fleet reads back for its metrics.
    mean_abs_advantage = (pg_advantages.abs() * mask).sum() / decisions
    return [float(x.detach()) for x in (total, policy, baseline, entropy, clipped_fraction, mean_abs_advantage, grad_norm)]


WORKLOADS = {
    "mlp": (lambda: Mlp(), "mlp", 20),
    "shallow_cnn": (lambda: ShallowCnn(), "cnn", 2),
    "shallow_cnn_lstm": (lambda: ShallowCnnLstm(), "lstm", 2),
    "shallow_cnn_nn_lstm": (lambda: ShallowCnnLstm(fused=True), "lstm", 2),
    "deep_resnet": (lambda: ShallowCnn(torso=DeepTorso), "cnn", 1),
    "nature_cnn": (lambda: ShallowCnn(torso=nature_torso), "cnn", 2),
}


def run(name, args):
    build, kind, warmup = WORKLOADS[name]
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, foreach=True)
    batch = make_batch(kind)
    for _ in range(warmup):
        update(model, optimizer, batch)
    times = []
    began = time.perf_counter()
    while True:
        start = time.perf_counter()
        update(model, optimizer, batch)
        times.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
        if args.updates:
            if len(times) >= args.updates:
                break
        elif elapsed >= args.seconds:
            break
    rate = len(times) / elapsed
    return {
        "workload": name,
        "updates_per_s": rate,
        "frames_per_s": batch["frames"] * rate,
        "ms_per_update_p50": statistics.median(times) * 1e3,
    }, batch["frames"], len(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per workload")
    parser.add_argument("--updates", type=int, default=0, help="timed updates per workload (overrides --seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workload", action="append", default=[], choices=sorted(WORKLOADS))
    parser.add_argument("--reference", action="store_true", help="also run shallow_cnn_nn_lstm (nn.LSTM, no resets)")
    parser.add_argument("--json", action="store_true", help="one JSON line per workload instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.workload or ["mlp", "shallow_cnn", "shallow_cnn_lstm", "deep_resnet", "nature_cnn"] + (
        ["shallow_cnn_nn_lstm"] if args.reference else []
    )
    if not args.json:
        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x unroll {UNROLL}")
        print("| workload | updates/s | frames/s | ms/update p50 | frames/update | updates timed |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        result, frames, count = run(name, args)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(
                f"| {name} | {result['updates_per_s']:.2f} | {result['frames_per_s']:.0f} | "
                f"{result['ms_per_update_p50']:.1f} | {frames} | {count} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
