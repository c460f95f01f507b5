"""The env bridge's vector stepped in Python alone, without gRPC: the same
`EnvVector` the server builds (same backend, wrappers and preprocessing),
or with `--gymnasium` Gymnasium's own vector (`gymnasium.make_vec` with its
default vectorization, no bridge code at all), fed uniformly random actions
(indices, or values in [-1, 1] mapped into the action bounds as fleet's
actors map theirs). Prints one JSON line with agent steps/s, which
`bench/env_bridge.sh` sets beside `fleet bench env` through the bridge.

    python bench/env_direct.py --env gym:ALE/Pong-v5 --num-envs 16 --atari --seconds 20
    python bench/env_direct.py --env HalfCheetah-v5 --num-envs 16 --gymnasium --seconds 20
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import gymnasium
import numpy as np

from fleet_envbridge.atari import STANDARD
from fleet_envbridge.vector import EnvVector


def random_actions(
    rng: np.random.Generator, num_envs: int, num_actions: int, shape: tuple, low, high
) -> Callable[[], np.ndarray]:
    """Draws one uniformly random action per environment: an index below
    `num_actions`, or (`num_actions` 0) f32 values of `shape` in the bounds."""
    if num_actions:
        return lambda: rng.integers(0, num_actions, size=num_envs, dtype=np.int64)
    low = np.asarray(low, np.float32).reshape(shape)
    high = np.asarray(high, np.float32).reshape(shape)
    return lambda: low + (rng.uniform(-1.0, 1.0, size=(num_envs, *shape)).astype(np.float32) + 1.0) * 0.5 * (high - low)


def bridge_vector(args: argparse.Namespace, rng: np.random.Generator):
    """The bridge's `EnvVector`, and a step function returning how many
    environments acted."""
    vector = EnvVector(args.env, args.num_envs, args.seed, atari=STANDARD if args.atari else None)
    layout = vector.action
    draw = random_actions(rng, args.num_envs, layout.num_actions, layout.shape, layout.low, layout.high)
    vector.reset()
    is_last = np.zeros(args.num_envs, dtype=bool)

    def step() -> int:
        nonlocal is_last
        acted = int((~is_last).sum())
        timestep = vector.step(layout.to_env(draw(), args.num_envs))
        is_last = timestep.terminated | timestep.truncated
        return acted

    return vector, vector.backend, step


def gymnasium_vector(args: argparse.Namespace, rng: np.random.Generator):
    """Gymnasium's own vector of `args.env` (a Gymnasium id), reset on the
    next step as the bridge's is, and a step function returning how many
    environments acted."""
    # Its default vectorization: the id's own vector class where Gymnasium
    # has one (CartPole's), a synchronous vector of single environments
    # otherwise (MuJoCo's). Both reset on the next step by default.
    env = gymnasium.make_vec(args.env, num_envs=args.num_envs)
    mode = env.metadata.get("autoreset_mode")
    if mode is not None and mode != gymnasium.vector.AutoresetMode.NEXT_STEP:
        raise SystemExit(f"{args.env}: the vector resets {mode}, not on the next step")
    space = env.single_action_space
    if isinstance(space, gymnasium.spaces.Discrete):
        draw = random_actions(rng, args.num_envs, int(space.n), (), None, None)
    else:
        draw = random_actions(rng, args.num_envs, 0, space.shape, space.low, space.high)
    env.reset(seed=args.seed)
    is_last = np.zeros(args.num_envs, dtype=bool)

    def step() -> int:
        nonlocal is_last
        acted = int((~is_last).sum())
        _, _, terminated, truncated, _ = env.step(draw())
        is_last = terminated | truncated
        return acted

    return env, f"gymnasium vector ({type(env).__name__})", step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--atari", action="store_true", help="the standard Atari preprocessing")
    parser.add_argument(
        "--gymnasium",
        action="store_true",
        help="step Gymnasium's own vector (gymnasium.make_vec) rather than the bridge's EnvVector",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.gymnasium and args.atari:
        parser.error("--gymnasium steps the id as made: no --atari")

    rng = np.random.default_rng(args.seed)
    env, backend, step = (gymnasium_vector if args.gymnasium else bridge_vector)(args, rng)

    warm_up = time.perf_counter()
    while time.perf_counter() - warm_up < 1.0:
        step()
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        steps += step()
    elapsed = time.perf_counter() - start
    frame_skip = STANDARD.frame_skip if args.atari else 1
    print(
        json.dumps(
            {
                "env": args.env,
                "backend": backend,
                "num_envs": args.num_envs,
                "steps": steps,
                "seconds": elapsed,
                "steps_per_second": steps / elapsed,
                "frames_per_second": steps * frame_skip / elapsed,
            }
        )
    )
    env.close()


if __name__ == "__main__":
    main()
