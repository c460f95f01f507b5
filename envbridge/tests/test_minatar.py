"""MinAtar's bool grids arrive as u8 images, channels first, cells 0 or 255,
and its games step over the bridge as they do directly in Python."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from fleet_envbridge import fleet_pb2

from conftest import observations_of

pytest.importorskip("minatar")

NUM_ENVS = 2
SEED = 4


def as_sent(grids: np.ndarray) -> np.ndarray:
    """A vector of height × width × channels bool grids as the bridge sends it."""
    return grids.transpose(0, 3, 1, 2).astype(np.uint8) * 255


def test_breakout_arrives_as_u8_grids_and_steps_like_minatar(client):
    spec = client.open("MinAtar/Breakout-v1", NUM_ENVS, SEED)
    assert spec.observation_dtype == fleet_pb2.DTYPE_U8
    assert list(spec.observation_shape) == [4, 10, 10]
    assert spec.num_actions == 3

    # The bridge has registered the namespace by now.
    reference = gymnasium.make_vec(
        "MinAtar/Breakout-v1",
        num_envs=NUM_ENVS,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP},
    )
    assert reference.single_observation_space.dtype == np.bool_

    bridged = client.reset()
    expected, _ = reference.reset(seed=SEED)
    np.testing.assert_array_equal(observations_of(bridged), as_sent(expected))
    rng = np.random.default_rng(9)
    seen_end = False
    for step in range(300):
        actions = rng.integers(0, 3, size=NUM_ENVS, dtype=np.int64)
        bridged = client.step(actions)
        observations, rewards, terminated, truncated, _ = reference.step(actions)
        where = f"step {step}"
        grid = observations_of(bridged)
        assert set(np.unique(grid)) <= {0, 255}, where
        np.testing.assert_array_equal(grid, as_sent(observations), where)
        np.testing.assert_array_equal(np.array(bridged.rewards, np.float32), rewards.astype(np.float32), where)
        np.testing.assert_array_equal(np.array(bridged.terminated), terminated, where)
        seen_end |= bool(terminated.any())
    reference.close()
    assert seen_end, "random Breakout loses its ball within 300 steps"
