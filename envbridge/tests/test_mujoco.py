"""Gymnasium's MuJoCo environments (the `mujoco` extra) open with f32 vector
observations and bounded f32 actions, and step over the bridge as Gymnasium
steps them directly."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from fleet_envbridge import fleet_pb2

from conftest import observations_of

pytest.importorskip("mujoco", reason="MuJoCo is not installed (pip install './envbridge[mujoco]')")

NUM_ENVS = 2
SEED = 11

# Observation size, action dimensions and action bound of each v5 id.
SPECS = {
    "HalfCheetah-v5": (17, 6, 1.0),
    "Hopper-v5": (11, 3, 1.0),
    "Walker2d-v5": (17, 6, 1.0),
    "Ant-v5": (105, 8, 1.0),
    "Humanoid-v5": (348, 17, 0.4),
}


@pytest.mark.parametrize("env_id", sorted(SPECS))
def test_mujoco_v5_opens_with_vector_observations_and_bounded_actions(client, env_id):
    size, dims, bound = SPECS[env_id]
    spec = client.open(env_id, NUM_ENVS, SEED)
    assert spec.observation_dtype == fleet_pb2.DTYPE_F32
    assert list(spec.observation_shape) == [size]
    assert spec.num_actions == 0
    assert list(spec.action_shape) == [dims]
    np.testing.assert_allclose(spec.action_low, [-bound] * dims, rtol=1e-6)
    np.testing.assert_allclose(spec.action_high, [bound] * dims, rtol=1e-6)
    timestep = client.reset()
    observations = observations_of(timestep)
    assert observations.shape == (NUM_ENVS, size)
    assert np.isfinite(observations).all()


@pytest.mark.parametrize("env_id, steps", [("HalfCheetah-v5", 30), ("Hopper-v5", 200)])
def test_mujoco_steps_over_the_bridge_as_gymnasium_steps_it(client, env_id, steps):
    """Random actions within the bounds give Gymnasium's own observations,
    rewards and flags; Hopper falls within the steps, so its episode ends
    (terminated) and the next step starts a new one."""
    client.open(env_id, NUM_ENVS, SEED)
    reference = gymnasium.make_vec(
        env_id,
        num_envs=NUM_ENVS,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP},
    )
    expected, _ = reference.reset(seed=SEED)
    np.testing.assert_allclose(observations_of(client.reset()), expected, rtol=1e-6, atol=1e-6)
    _, dims, bound = SPECS[env_id]
    rng = np.random.default_rng(3)
    is_last = np.zeros(NUM_ENVS, dtype=bool)
    ends = 0
    for _ in range(steps):
        actions = rng.uniform(-bound, bound, size=(NUM_ENVS, dims)).astype(np.float32)
        bridged = client.step(actions)
        expected, rewards, terminated, truncated, _ = reference.step(actions)
        np.testing.assert_allclose(observations_of(bridged), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(bridged.is_first, is_last)
        # Gymnasium reports the reset step's reward as 0 already.
        np.testing.assert_allclose(bridged.rewards, np.where(is_last, 0.0, rewards), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(bridged.terminated, terminated & ~is_last)
        np.testing.assert_array_equal(bridged.truncated, truncated & ~is_last)
        is_last = np.asarray(bridged.terminated) | np.asarray(bridged.truncated)
        ends += int(is_last.sum())
    reference.close()
    if env_id == "Hopper-v5":
        assert ends > 0, "random actions topple Hopper within 200 steps"
