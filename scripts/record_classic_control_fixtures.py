#!/usr/bin/env python3
"""Record Gymnasium classic-control transitions as fixtures for the native Rust ports.

    pip install gymnasium==1.4.0      # recorded with numpy 2.4.6, Python 3.11, glibc on x86-64
    python3 scripts/record_classic_control_fixtures.py [ENV_ID ...]

Writes actor/tests/fixtures/<id>.json (pendulum_v1.json, ...) for Pendulum-v1,
MountainCarContinuous-v0, Acrobot-v1 and MountainCar-v0, or for the ids named.
CartPole-v1 has its own recorder, scripts/record_cartpole_fixtures.py.

Every environment is built with gymnasium.make(id), so its TimeLimit wrapper is
part of what is recorded; the physical state is read from env.unwrapped.state.
For each environment the fixture holds:
  * seeded episodes from reset, driven by a fixed mix of a simple controller,
    fixed actions and seeded random ones (continuous actions include values
    outside the action box, to exercise Gymnasium's clipping), run until they
    end or for a fixed number of steps;
  * hand-placed transitions around the edges: speed and position limits, the
    goal, and the step that reaches the time limit (set through the wrapper's
    elapsed-step count), where the episode is truncated.

Each step stores the state before as raw IEEE-754 bit patterns (u64) with its
NumPy dtype (MountainCarContinuous keeps its state in float32 once stepped,
Acrobot draws its reset state in float32), so a reader can place its own
environment in exactly that state; the state after both as full-precision
floats and as bit patterns; the float32 observation's exact values; and the
reward as a float and as its bit pattern.
"""

import json
import math
import os
import struct
import sys
import warnings

import gymnasium as gym
import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "actor", "tests", "fixtures")
MAX_FIXTURE_BYTES = 300_000


def f64_bits(value):
    return struct.unpack("<Q", struct.pack("<d", float(value)))[0]


def time_limit_of(env):
    wrapper = env
    while not isinstance(wrapper, gym.wrappers.TimeLimit):
        wrapper = wrapper.env
    return wrapper


def dtype_of(state):
    """The NumPy dtype the environment holds its state in (MountainCar-v0 keeps a tuple of float64)."""
    return str(state.dtype) if isinstance(state, np.ndarray) else "float64"


class Recorder:
    def __init__(self, env_id):
        self.env_id = env_id
        self.env = gym.make(env_id)
        self.time_limit = time_limit_of(self.env)
        space = self.env.action_space
        self.continuous = isinstance(space, gym.spaces.Box)
        if self.continuous:
            assert space.shape == (1,) and space.dtype == np.float32
            self.low, self.high = float(space.low[0]), float(space.high[0])
        else:
            self.num_actions = int(space.n)

    def state(self):
        state = self.env.unwrapped.state
        return [float(v) for v in state], dtype_of(state)

    def reset(self, seed):
        observation, _ = self.env.reset(seed=seed)
        state, dtype = self.state()
        return {
            "reset_state": state,
            "reset_state_bits": [f64_bits(v) for v in state],
            "reset_dtype": dtype,
            "reset_observation": [float(v) for v in observation],
        }

    def place(self, state, dtype, elapsed_steps):
        """Put the (already reset) environment into an arbitrary state."""
        self.env.unwrapped.state = np.array(state, dtype=dtype)
        self.time_limit._elapsed_steps = elapsed_steps

    def step(self, action):
        before, dtype = self.state()
        elapsed_before = self.time_limit._elapsed_steps
        if self.continuous:
            gym_action = np.array([action], dtype=np.float32)
            recorded_action = [float(gym_action[0])]
        else:
            gym_action = recorded_action = int(action)
        observation, reward, terminated, truncated, _ = self.env.step(gym_action)
        after, _ = self.state()
        assert observation.dtype == np.float32
        return {
            "elapsed_before": elapsed_before,
            "dtype_before": dtype,
            "state_before_bits": [f64_bits(v) for v in before],
            "action": recorded_action,
            "state_after": after,
            "state_after_bits": [f64_bits(v) for v in after],
            "observation": [float(v) for v in observation],
            "reward": float(reward),
            "reward_bits": f64_bits(reward),
            "terminated": bool(terminated),
            "truncated": bool(truncated),
        }


def ending_of(step):
    if step["terminated"]:
        return "terminated"
    return "truncated" if step["truncated"] else "running"


def record_episode(recorder, name, seed, choose_action, max_steps=None):
    """An episode from a seeded reset, until it ends or for max_steps steps."""
    reset = recorder.reset(seed)
    action_rng = np.random.default_rng(seed + 10_000)
    steps = []
    while max_steps is None or len(steps) < max_steps:
        state, _ = recorder.state()
        steps.append(recorder.step(choose_action(len(steps), state, action_rng)))
        if steps[-1]["terminated"] or steps[-1]["truncated"]:
            break
    return {"name": name, "seed": seed, "ending": ending_of(steps[-1]), **reset, "steps": steps}


def record_placed(recorder, name, state, elapsed_steps, actions, dtype="float64"):
    """Transitions from a hand-placed state, one per action."""
    recorder.reset(0)
    recorder.place(state, dtype, elapsed_steps)
    steps = [recorder.step(action) for action in actions]
    return {"name": name, "seed": None, "ending": ending_of(steps[-1]), "steps": steps}


def mixed(controller, low, high, continuous):
    """The fixed action pattern: a controller's action on most steps, every
    fifth step a seeded random one and every seventh a fixed extreme. For
    continuous actions the controller's push and the random values reach half
    a range beyond the bounds on either side."""

    def choose(index, state, rng):
        if not continuous:
            if index % 7 == 6:
                return (index // 7) % 3
            if index % 5 == 4:
                return int(rng.integers(3))
            return controller(state)
        span = high - low
        if index % 7 == 6:
            return [low - 0.75 * span, high, 0.0, high + 1.5 * span, low][(index // 7) % 5]
        if index % 5 == 4:
            return float(rng.uniform(low - 0.5 * span, high + 0.5 * span))
        return controller(state) * float(rng.uniform(0.25, 1.5))

    return choose


def pendulum(recorder):
    # Swing with the angular velocity, at up to 1.5x the maximum torque.
    choose = mixed(lambda s: 2.0 if s[1] >= 0 else -2.0, -2.0, 2.0, continuous=True)
    episodes = [record_episode(recorder, f"mixed-{seed}", seed, choose) for seed in range(2)]
    episodes.append(record_episode(recorder, "mixed-2-start", 2, choose, max_steps=40))
    episodes += [
        record_placed(recorder, "speed-limit-positive", [0.3, 7.9], 17, [2.0, 5.0, 1.5]),
        record_placed(recorder, "speed-limit-negative", [-0.3, -7.95], 17, [-2.0, -9.5]),
        record_placed(recorder, "angles-beyond-pi", [7.0, 0.5], 3, [0.25, -0.75]),
        record_placed(recorder, "angles-below-minus-pi", [-10.0, -1.0], 3, [0.0, 3.0]),
        record_placed(recorder, "upright-at-rest", [0.0, 0.0], 5, [0.0, -0.0]),
        record_placed(recorder, "time-limit", [2.5, -3.0], 199, [1.25]),
    ]
    by_name = {episode["name"]: episode for episode in episodes}
    assert all(len(by_name[f"mixed-{seed}"]["steps"]) == 200 for seed in range(2))
    assert by_name["time-limit"]["steps"][-1]["truncated"]
    assert any(step["state_after"][1] == 8.0 for step in by_name["speed-limit-positive"]["steps"])
    assert any(step["state_after"][1] == -8.0 for step in by_name["speed-limit-negative"]["steps"])
    return episodes


def position_landing_on(recorder, target, velocity, action):
    """A float32 position from which one step at `velocity` under `action`
    lands exactly on float32(target), searched from target - velocity."""
    car = recorder.env.unwrapped
    goal = np.float32(target)

    def landing(position):
        car.state = np.array([position, velocity], dtype=np.float32)
        car.step(np.array([action], dtype=np.float32))
        return car.state[0]

    position = np.float32(goal - np.float32(velocity))
    for _ in range(3):  # close in by the miss, then ulp by ulp
        position = np.float32(position + (goal - landing(position)))
    for _ in range(100):
        landed = landing(position)
        if landed == goal:
            return float(position)
        position = np.nextafter(position, np.float32(np.inf if landed < goal else -np.inf))
    raise AssertionError(f"no float32 position lands on {target}")


def mountain_car_continuous(recorder):
    # Push with the velocity (left from rest), at up to 1.5x the maximum force.
    choose = mixed(lambda s: 1.0 if s[1] > 0 else -1.0, -1.0, 1.0, continuous=True)
    episodes = [record_episode(recorder, f"pumping-{seed}", seed, choose) for seed in range(3)]
    rng_free = mixed(lambda s: 0.3, -1.0, 1.0, continuous=True)
    episodes.append(record_episode(recorder, "drifting-3-start", 3, rng_free, max_steps=60))
    episodes += [
        record_placed(recorder, "left-wall", [-1.19, -0.05], 40, [-0.5, -2.0, 0.7], dtype="float32"),
        record_placed(recorder, "left-wall-from-reset-precision", [-1.19, -0.05], 0, [-1.0, 0.1]),
        record_placed(recorder, "speed-limit-positive", [-0.52, 0.0699], 40, [1.0, 3.0], dtype="float32"),
        record_placed(recorder, "speed-limit-negative", [-0.52, -0.0699], 40, [-1.0, -0.5], dtype="float32"),
        record_placed(recorder, "speed-limit-from-reset-precision", [-0.52, 0.0699], 0, [1.0]),
        record_placed(recorder, "right-edge", [0.59, 0.06], 40, [2.0], dtype="float32"),
        record_placed(recorder, "at-goal-moving-left", [0.46, -0.001], 40, [-0.25, 0.25], dtype="float32"),
        # float32(0.45) is below 0.45, but NumPy compares the float32 position in float32: the goal is reached.
        record_placed(recorder, "lands-on-the-goal-in-float32", [position_landing_on(recorder, 0.45, 0.01, 0.3), 0.01],
                      40, [0.3], dtype="float32"),
        record_placed(recorder, "time-limit", [-0.5, 0.01], 998, [0.5], dtype="float32"),
        record_placed(recorder, "terminated-at-time-limit", [0.44, 0.02], 998, [1.0], dtype="float32"),
    ]
    by_name = {episode["name"]: episode for episode in episodes}
    assert all(by_name[f"pumping-{seed}"]["ending"] == "terminated" for seed in range(3))
    assert by_name["left-wall"]["steps"][0]["state_after"] == [-1.2000000476837158, 0.0]
    assert by_name["time-limit"]["ending"] == "truncated"
    last = by_name["terminated-at-time-limit"]["steps"][-1]
    assert last["terminated"] and last["truncated"]
    assert by_name["at-goal-moving-left"]["steps"][0]["terminated"] is False
    landing = by_name["lands-on-the-goal-in-float32"]["steps"][0]
    assert landing["terminated"] and landing["state_after"][0] == float(np.float32(0.45)) < 0.45
    return episodes


def acrobot(recorder):
    # Torque with the second joint's velocity: reaches the height in about a hundred steps.
    choose = mixed(lambda s: 2 if s[3] > 0 else 0, None, None, continuous=False)
    episodes = [record_episode(recorder, f"pumping-{seed}", seed, choose) for seed in range(2)]
    rng_free = mixed(lambda s: 1, None, None, continuous=False)
    episodes.append(record_episode(recorder, "drifting-2-start", 2, rng_free, max_steps=40))
    pi = math.pi
    episodes += [
        record_placed(recorder, "speed-limits", [0.5, -0.5, 12.5, 28.0], 20, [2, 2, 0]),
        record_placed(recorder, "speed-limits-negative", [-0.5, 0.5, -12.5, -28.0], 20, [0, 0, 1]),
        record_placed(recorder, "angles-wrap", [pi - 0.01, -pi + 0.01, 2.0, -3.0], 20, [1, 2, 0]),
        record_placed(recorder, "angles-from-beyond-pi", [3.5, -3.5, 0.0, 0.0], 20, [1]),
        record_placed(recorder, "upright", [pi, 0.0, 0.0, 0.0], 20, [1, 0]),
        record_placed(recorder, "reset-precision", [0.05, -0.07, 0.01, 0.09], 0, [0, 2], dtype="float32"),
        record_placed(recorder, "time-limit", [0.1, 0.2, 0.3, 0.4], 499, [2]),
        record_placed(recorder, "terminated-at-time-limit", [pi - 0.2, 0.1, 0.0, 0.0], 499, [1]),
    ]
    by_name = {episode["name"]: episode for episode in episodes}
    assert all(by_name[f"pumping-{seed}"]["ending"] == "terminated" for seed in range(2))
    assert by_name["time-limit"]["ending"] == "truncated"
    last = by_name["terminated-at-time-limit"]["steps"][-1]
    assert last["terminated"] and last["truncated"] and last["reward"] == 0.0
    four_pi, nine_pi = 4 * pi, 9 * pi
    assert any(abs(step["state_after"][2]) == four_pi for step in by_name["speed-limits"]["steps"])
    assert any(abs(step["state_after"][3]) == nine_pi for step in by_name["speed-limits"]["steps"])
    return episodes


def mountain_car(recorder):
    choose = mixed(lambda s: 2 if s[1] > 0 else 0, None, None, continuous=False)
    episodes = [record_episode(recorder, f"pumping-{seed}", seed, choose) for seed in range(2)]
    rng_free = mixed(lambda s: 1, None, None, continuous=False)
    episodes.append(record_episode(recorder, "drifting-3", 3, rng_free))
    episodes += [
        record_placed(recorder, "left-wall", [-1.19, -0.03], 30, [0, 0, 2, 1]),
        record_placed(recorder, "speed-limit-positive", [-0.5, 0.0695], 30, [2, 2]),
        record_placed(recorder, "speed-limit-negative", [-0.5, -0.0695], 30, [0]),
        record_placed(recorder, "right-edge", [0.58, 0.06], 30, [2]),
        record_placed(recorder, "at-goal-moving-left", [0.51, -0.001], 30, [0]),
        record_placed(recorder, "terminated-at-time-limit", [0.49, 0.02], 199, [2]),
    ]
    by_name = {episode["name"]: episode for episode in episodes}
    assert all(by_name[f"pumping-{seed}"]["ending"] == "terminated" for seed in range(2))
    drifting = by_name["drifting-3"]
    assert drifting["ending"] == "truncated" and len(drifting["steps"]) == 200
    assert by_name["left-wall"]["steps"][0]["state_after"] == [-1.2, 0.0]
    last = by_name["terminated-at-time-limit"]["steps"][-1]
    assert last["terminated"] and last["truncated"]
    return episodes


RECORDERS = {
    "Pendulum-v1": ("pendulum_v1.json", pendulum),
    "MountainCarContinuous-v0": ("mountain_car_continuous_v0.json", mountain_car_continuous),
    "Acrobot-v1": ("acrobot_v1.json", acrobot),
    "MountainCar-v0": ("mountain_car_v0.json", mountain_car),
}


def main(env_ids):
    # Gymnasium warns about out-of-bounds actions and states; they are recorded on purpose.
    warnings.filterwarnings("ignore", module="gymnasium")
    for env_id in env_ids or RECORDERS:
        file_name, record = RECORDERS[env_id]
        recorder = Recorder(env_id)
        episodes = record(recorder)
        fixture = {
            "description": f"{env_id} transitions recorded from gymnasium.make('{env_id}') "
            "by scripts/record_classic_control_fixtures.py",
            "env_id": env_id,
            "gymnasium_version": gym.__version__,
            "numpy_version": np.__version__,
            "max_episode_steps": recorder.time_limit._max_episode_steps,
            "episodes": episodes,
        }
        text = render(fixture)
        assert len(text) < MAX_FIXTURE_BYTES, f"{env_id}: fixture too large: {len(text)} bytes"
        path = os.path.join(FIXTURE_DIR, file_name)
        os.makedirs(FIXTURE_DIR, exist_ok=True)
        with open(path, "w") as out:
            out.write(text)
        total_steps = sum(len(episode["steps"]) for episode in episodes)
        print(f"wrote {os.path.normpath(path)}: {len(episodes)} episodes, {total_steps} steps, "
              f"{len(text)} bytes", file=sys.stderr)


def render(fixture):
    """JSON with one step per line: compact, yet diffs stay readable."""
    lines = ["{"]
    for key, value in fixture.items():
        if key != "episodes":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
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
    main(sys.argv[1:])
