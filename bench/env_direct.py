"""The env bridge's vector stepped in Python alone, without gRPC: the same
`EnvVector` the server builds (same backend, wrappers and preprocessing),
fed uniformly random actions. Prints one JSON line with agent steps/s, which
`bench/env_bridge.sh` sets beside `fleet bench env` through the bridge.

    python bench/env_direct.py --env gym:ALE/Pong-v5 --num-envs 16 --atari --seconds 20
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fleet_envbridge.atari import STANDARD
from fleet_envbridge.vector import EnvVector

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--atari", action="store_true", help="the standard Atari preprocessing")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    vector = EnvVector(args.env, args.num_envs, args.seed, atari=STANDARD if args.atari else None)
    rng = np.random.default_rng(args.seed)
    num_actions = vector.action.num_actions
    vector.reset()
    is_last = np.zeros(args.num_envs, dtype=bool)

    def step() -> int:
        nonlocal is_last
        acted = int((~is_last).sum())
        actions = rng.integers(0, num_actions, size=args.num_envs, dtype=np.int64)
        timestep = vector.step(vector.action.to_env(actions, args.num_envs))
        is_last = timestep.terminated | timestep.truncated
        return acted

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
                "backend": vector.backend,
                "num_envs": args.num_envs,
                "steps": steps,
                "seconds": elapsed,
                "steps_per_second": steps / elapsed,
                "frames_per_second": steps * frame_skip / elapsed,
            }
        )
    )
    vector.close()


if __name__ == "__main__":
    main()
