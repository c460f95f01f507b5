#!/usr/bin/env python3
"""Record CartPole-v1 transitions from Gymnasium as a fixture for the native Rust port.

    pip install gymnasium==1.4.0      # recorded with numpy 2.4.6, Python 3.11
    python3 scripts/record_cartpole_fixtures.py

Writes actor/tests/fixtures/cartpole_v1.json. The environment is built with
gymnasium.make("CartPole-v1"), so the TimeLimit wrapper (500 steps) is part of
what is recorded, and the physical state is read from env.unwrapped.state.

Episodes recorded:
  * random actions (seeded numpy) until the pole falls (termination through theta);
  * a simple balancing controller mixed with random actions, giving episodes
    that end when the cart leaves the track (termination through x) and one
    that runs to truncation at 500 steps;
  * hand-placed single transitions around the edges: states exactly on the
    thresholds, states just past them, an episode that terminates on its 500th
    step (both flags set), and steps taken after termination.

Each step stores the state before and after as Python floats (full precision)
and also as the raw IEEE-754 bit patterns (u64), so that a reader whose float
parser is not correctly rounded can still replay the exact inputs. The
observation after the step is stored as the exact values of the float32 array.
"""

import json
import math
import os
import struct
import sys
import warnings

import gymnasium as gym
import numpy as np

FIXTURE_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "actor", "tests", "fixtures", "cartpole_v1.json"
)
MAX_FIXTURE_BYTES = 2_000_000


def f64_bits(value):
    return struct.unpack("<Q", struct.pack("<d", float(value)))[0]


def next_up(value):
    return math.nextafter(value, math.inf)


def next_down(value):
    return math.nextafter(value, -math.inf)


def time_limit_of(env):
    wrapper = env
    while not isinstance(wrapper, gym.wrappers.TimeLimit):
        wrapper = wrapper.env
    return wrapper


class Recorder:
    def __init__(self):
        self.env = gym.make("CartPole-v1")
        self.time_limit = time_limit_of(self.env)

    def state(self):
        return [float(v) for v in self.env.unwrapped.state]

    def reset(self, seed):
        observation, _ = self.env.reset(seed=seed)
        return self.state(), [float(v) for v in observation]

    def place(self, state, elapsed_steps):
        """Put the (already reset) environment into an arbitrary state."""
        self.env.unwrapped.state = np.array(state, dtype=np.float64)
        self.time_limit._elapsed_steps = elapsed_steps

    def step(self, action):
        before = self.state()
        elapsed_before = self.time_limit._elapsed_steps
        after_termination = self.env.unwrapped.steps_beyond_terminated is not None
        observation, reward, terminated, truncated, _ = self.env.step(action)
        after = self.state()
        assert observation.dtype == np.float32
        return {
            "state_before": before,
            "state_before_bits": [f64_bits(v) for v in before],
            "elapsed_before": elapsed_before,
            "after_termination": after_termination,
            "action": int(action),
            "state_after": after,
            "state_after_bits": [f64_bits(v) for v in after],
            "observation_after": [float(v) for v in observation],
            "reward": float(reward),
            "terminated": bool(terminated),
            "truncated": bool(truncated),
        }


def ending_of(step):
    """Which condition ended the episode at this step, for the fixture's labels."""
    x = step["state_after"][0]
    if step["terminated"]:
        return "x" if (x < -2.4 or x > 2.4) else "theta"
    return "truncated" if step["truncated"] else "running"


def record_episode(recorder, name, seed, choose_action, extra_steps_after_end=0):
    reset_state, reset_observation = recorder.reset(seed)
    action_rng = np.random.default_rng(seed + 10_000)
    steps = []
    while True:
        action = choose_action(recorder.state(), action_rng)
        steps.append(recorder.step(action))
        if steps[-1]["terminated"] or steps[-1]["truncated"]:
            break
    ending = ending_of(steps[-1])
    for _ in range(extra_steps_after_end):
        steps.append(recorder.step(int(action_rng.integers(2))))
    return {
        "name": name,
        "seed": seed,
        "ending": ending,
        "reset_state": reset_state,
        "reset_observation": reset_observation,
        "steps": steps,
    }


def random_policy(_state, rng):
    return int(rng.integers(2))


def balancing_policy(randomness):
    def choose(state, rng):
        if rng.random() < randomness:
            return int(rng.integers(2))
        _, _, theta, theta_dot = state
        return 1 if theta + 0.5 * theta_dot > 0 else 0

    return choose


def record_placed(recorder, name, state, elapsed_steps, actions):
    """Single hand-placed transitions (and what follows them) from a fixed state."""
    recorder.reset(0)
    recorder.place(state, elapsed_steps)
    steps = [recorder.step(action) for action in actions]
    return {"name": name, "seed": None, "ending": ending_of(steps[-1]), "steps": steps}


def main():
    # Gymnasium warns when stepping past termination; those steps are recorded on purpose.
    warnings.filterwarnings("ignore", message=".*already returned terminated = True.*")
    recorder = Recorder()
    episodes = []

    for seed in range(8):
        episodes.append(record_episode(recorder, f"random-{seed}", seed, random_policy))

    # Balancing with 20% random actions: seeds 0 and 1 drift off the track,
    # seed 2 holds for the whole 500 steps (checked below).
    for seed in range(3):
        episodes.append(record_episode(recorder, f"balancing-{seed}", seed, balancing_policy(0.2)))

    # Keep stepping after the pole has fallen: Gymnasium pays 0 reward there.
    episodes.append(record_episode(recorder, "random-100-beyond-end", 100, random_policy, extra_steps_after_end=4))

    theta_limit = 12 * 2 * math.pi / 360
    assert theta_limit == 0.20943951023931953
    # With zero velocity a position on the threshold stays exactly there.
    for sign in (1.0, -1.0):
        side = "right" if sign > 0 else "left"
        episodes.append(record_placed(recorder, f"x-on-{side}-threshold", [sign * 2.4, 0.0, 0.0, 0.0], 10, [0, 1]))
        episodes.append(
            record_placed(recorder, f"x-past-{side}-threshold",
                          [next_up(2.4) * sign, 0.0, 0.0, 0.0], 10, [1])
        )
        episodes.append(
            record_placed(recorder, f"theta-on-{side}-threshold",
                          [0.0, 0.0, sign * theta_limit, 0.0], 10, [0])
        )
        episodes.append(
            record_placed(recorder, f"theta-past-{side}-threshold",
                          [0.0, 0.0, sign * next_up(theta_limit), 0.0], 10, [1])
        )
    episodes.append(record_placed(recorder, "truncated-at-500", [0.01, 0.0, 0.01, 0.0], 499, [0, 1]))
    episodes.append(record_placed(recorder, "terminated-and-truncated-at-500", [2.39, 1.0, 0.0, 0.0], 499, [1, 0]))
    episodes.append(record_placed(recorder, "fast-spin", [0.3, -3.0, 0.1, 8.0], 42, [1, 0, 1]))

    by_name = {episode["name"]: episode for episode in episodes}
    assert by_name["balancing-0"]["ending"] == "x"
    assert by_name["balancing-1"]["ending"] == "x"
    assert by_name["balancing-2"]["ending"] == "truncated" and len(by_name["balancing-2"]["steps"]) == 500
    assert all(by_name[f"random-{seed}"]["ending"] == "theta" for seed in range(8))
    both = by_name["terminated-and-truncated-at-500"]["steps"][0]
    assert both["terminated"] and both["truncated"] and both["elapsed_before"] == 499
    assert by_name["random-100-beyond-end"]["steps"][-1]["reward"] == 0.0

    fixture = {
        "description": "CartPole-v1 transitions recorded from gymnasium.make('CartPole-v1') "
        "by scripts/record_cartpole_fixtures.py",
        "gymnasium_version": gym.__version__,
        "numpy_version": np.__version__,
        "episodes": episodes,
    }
    text = render(fixture)
    assert len(text) < MAX_FIXTURE_BYTES, f"fixture too large: {len(text)} bytes"
    os.makedirs(os.path.dirname(FIXTURE_PATH), exist_ok=True)
    with open(FIXTURE_PATH, "w") as out:
        out.write(text)
    total_steps = sum(len(episode["steps"]) for episode in episodes)
    print(f"wrote {os.path.normpath(FIXTURE_PATH)}: {len(episodes)} episodes, "
          f"{total_steps} steps, {len(text)} bytes", file=sys.stderr)


def render(fixture):
    """JSON with one step per line: compact, yet diffs stay readable."""
    lines = ["{"]
    for key in ("description", "gymnasium_version", "numpy_version"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(fixture[key])},")
    lines.append('  "episodes": [')
    for episode_index, episode in enumerate(fixture["episodes"]):
        lines.append("    {")
        for key, value in episode.items():
            if key != "steps":
                lines.append(f"      {json.dumps(key)}: {json.dumps(value)},")
        lines.append('      "steps": [')
        steps = episode["steps"]
        for step_index, step in enumerate(steps):
            comma = "," if step_index + 1 < len(steps) else ""
            lines.append(f"        {json.dumps(step)}{comma}")
        lines.append("      ]")
        lines.append("    }" + ("," if episode_index + 1 < len(fixture["episodes"]) else ""))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == fixture
    return text


if __name__ == "__main__":
    main()
