"""CartPole over the bridge equals CartPole stepped directly in Python."""

from __future__ import annotations

import gymnasium
import numpy as np

from fleet_envbridge import fleet_pb2
from fleet_envbridge.vector import resolve_backend

from conftest import observations_of

NUM_ENVS = 3
SEED = 7
# Short episodes, so that both terminations and time-limit truncations occur.
MAX_EPISODE_STEPS = 20
NUM_STEPS = 120


def fixed_actions() -> np.ndarray:
    """[NUM_STEPS, NUM_ENVS] actions, the same for the bridge and the reference."""
    return np.random.default_rng(11).integers(0, 2, size=(NUM_STEPS, NUM_ENVS), dtype=np.int64)


def test_spec_describes_cartpole(client):
    spec = client.open("CartPole-v1", NUM_ENVS, SEED)
    assert spec.observation_dtype == fleet_pb2.DTYPE_F32
    assert list(spec.observation_shape) == [4]
    assert spec.num_actions == 2
    assert list(spec.action_shape) == []
    assert spec.num_envs == NUM_ENVS
    assert spec.backend == "gymnasium"


def test_steps_equal_gymnasium_make_vec(client):
    """Observations, rewards and flags equal a Gymnasium vector's with the
    same seed and actions; is_first follows each terminated or truncated."""
    # "gym:" ids go to envpool where it is installed and has the game.
    env_id = "gym:CartPole-v1" if resolve_backend("gym:CartPole-v1")[0] == "gymnasium" else "CartPole-v1"
    client.open(env_id, NUM_ENVS, SEED, max_episode_steps=MAX_EPISODE_STEPS)
    reference = gymnasium.make_vec(
        "CartPole-v1", num_envs=NUM_ENVS, vectorization_mode="sync", max_episode_steps=MAX_EPISODE_STEPS
    )

    bridged = client.reset()
    expected_observations, _ = reference.reset(seed=SEED)
    assert list(bridged.observations.shape) == [NUM_ENVS, 4]
    np.testing.assert_array_equal(observations_of(bridged), expected_observations.astype(np.float32))
    assert list(bridged.is_first) == [True] * NUM_ENVS
    assert list(bridged.rewards) == [0.0] * NUM_ENVS

    expected_last = np.zeros(NUM_ENVS, dtype=bool)
    seen_terminated = seen_truncated = seen_is_first = False
    for step, actions in enumerate(fixed_actions()):
        bridged = client.step(actions)
        observations, rewards, terminated, truncated, _ = reference.step(actions)
        where = f"step {step}"
        np.testing.assert_array_equal(observations_of(bridged), observations.astype(np.float32), err_msg=where)
        np.testing.assert_array_equal(np.array(bridged.rewards, np.float32), rewards.astype(np.float32), where)
        np.testing.assert_array_equal(np.array(bridged.terminated), terminated, where)
        np.testing.assert_array_equal(np.array(bridged.truncated), truncated, where)
        np.testing.assert_array_equal(np.array(bridged.is_first), expected_last, where)
        seen_terminated |= bool(terminated.any())
        seen_truncated |= bool(truncated.any())
        seen_is_first |= bool(expected_last.any())
        expected_last = terminated | truncated
    reference.close()
    assert seen_terminated and seen_truncated and seen_is_first, "the run must cross both kinds of episode end"


def test_seeds_and_resets_follow_single_environments(client):
    """Env i behaves like a lone environment first reset with seed + i, reset
    (ignoring the action) on the step after its episode ends, and reset
    without reseeding by a later reset of the vector."""
    client.open("CartPole-v1", NUM_ENVS, SEED, max_episode_steps=MAX_EPISODE_STEPS)
    singles = [gymnasium.make("CartPole-v1", max_episode_steps=MAX_EPISODE_STEPS) for _ in range(NUM_ENVS)]

    bridged = observations_of(client.reset())
    for index, env in enumerate(singles):
        first, _ = env.reset(seed=SEED + index)
        np.testing.assert_array_equal(bridged[index], first)

    ended = [False] * NUM_ENVS
    for actions in fixed_actions()[:60]:
        timestep = client.step(actions)
        bridged = observations_of(timestep)
        for index, env in enumerate(singles):
            if ended[index]:
                observation, _ = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                observation, reward, terminated, truncated, _ = env.step(int(actions[index]))
            np.testing.assert_array_equal(bridged[index], observation)
            assert timestep.rewards[index] == reward
            assert timestep.is_first[index] == ended[index]
            assert (timestep.terminated[index], timestep.truncated[index]) == (terminated, truncated)
            ended[index] = terminated or truncated

    timestep = client.reset()
    bridged = observations_of(timestep)
    for index, env in enumerate(singles):
        observation, _ = env.reset()
        np.testing.assert_array_equal(bridged[index], observation)
    assert list(timestep.is_first) == [True] * NUM_ENVS
