"""ALE games with the standard Atari preprocessing, over the bridge, equal the
same Gymnasium vector stepped directly in Python; a lost life ends the
episode without resetting the game; the frame limit ends one truncated."""

from __future__ import annotations

import functools

import gymnasium
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from fleet_envbridge import fleet_pb2
from fleet_envbridge.atari import EpisodicLife

from conftest import expect_refused, observations_of, standard_atari

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

SEED = 3
NUM_ACTIONS = {"ALE/Pong-v5": 6, "ALE/Breakout-v5": 4}


def reference_vector(env_id: str, num_envs: int, atari: fleet_pb2.AtariPreprocessing) -> gymnasium.vector.VectorEnv:
    """What the bridge should serve, made from Gymnasium's own wrappers."""
    wrappers = [
        functools.partial(
            AtariPreprocessing,
            noop_max=atari.noop_max,
            frame_skip=atari.frame_skip,
            screen_size=atari.screen_size,
            terminal_on_life_loss=False,
            grayscale_obs=atari.grayscale,
            scale_obs=False,
        )
    ]
    if atari.episodic_life:
        wrappers.append(EpisodicLife)
    wrappers.append(functools.partial(FrameStackObservation, stack_size=atari.frame_stack))
    return gymnasium.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP},
        wrappers=wrappers,
        frameskip=1,
        repeat_action_probability=atari.repeat_action_probability,
        max_num_frames_per_episode=atari.max_episode_frames,
    )


def as_sent(observations: np.ndarray, grayscale: bool) -> np.ndarray:
    """The reference's observations in the bridge's layout: RGB stacks
    [N, frames, H, W, 3] become [N, frames * 3, H, W]."""
    if grayscale:
        return observations
    n, frames, height, width, channels = observations.shape
    return observations.transpose(0, 1, 4, 2, 3).reshape(n, frames * channels, height, width)


class Lockstep:
    """The bridge and the reference stepped with the same actions, checking
    that every observation, reward and flag agrees."""

    def __init__(self, client, env_id: str, num_envs: int, atari: fleet_pb2.AtariPreprocessing):
        self.client = client
        self.grayscale = atari.grayscale
        self.reference = reference_vector(env_id, num_envs, atari)
        self.spec = client.open(env_id, num_envs, SEED, atari=atari)
        self.rng = np.random.default_rng(5)
        self.num_envs = num_envs
        self.num_actions = NUM_ACTIONS[env_id]
        self.expected_first = np.zeros(num_envs, dtype=bool)
        self.steps = 0

    def reset(self) -> fleet_pb2.EnvTimestep:
        bridged = self.client.reset()
        expected, _ = self.reference.reset(seed=SEED)
        np.testing.assert_array_equal(observations_of(bridged), as_sent(expected, self.grayscale))
        assert list(bridged.is_first) == [True] * self.num_envs
        return bridged

    def step(self) -> fleet_pb2.EnvTimestep:
        actions = self.rng.integers(0, self.num_actions, size=self.num_envs, dtype=np.int64)
        bridged = self.client.step(actions)
        observations, rewards, terminated, truncated, _ = self.reference.step(actions)
        where = f"step {self.steps}"
        np.testing.assert_array_equal(observations_of(bridged), as_sent(observations, self.grayscale), where)
        np.testing.assert_array_equal(np.array(bridged.rewards, np.float32), rewards.astype(np.float32), where)
        np.testing.assert_array_equal(np.array(bridged.terminated), terminated, where)
        np.testing.assert_array_equal(np.array(bridged.truncated), truncated, where)
        np.testing.assert_array_equal(np.array(bridged.is_first), self.expected_first, where)
        self.expected_first = terminated | truncated
        self.steps += 1
        return bridged

    def ale(self, index: int = 0):
        return self.reference.envs[index].unwrapped.ale

    def close(self) -> None:
        self.reference.close()


def test_pong_episode_equals_gymnasium_with_the_same_wrappers(client):
    """Two whole Pong episodes (one per environment) through their terminal
    steps and the resets after them."""
    lockstep = Lockstep(client, "ALE/Pong-v5", 2, standard_atari())
    assert lockstep.spec.observation_dtype == fleet_pb2.DTYPE_U8
    assert list(lockstep.spec.observation_shape) == [4, 84, 84]
    assert lockstep.spec.num_actions == 6
    assert lockstep.spec.backend == "gymnasium"
    lockstep.reset()
    ended = np.zeros(2, dtype=bool)
    scored = False
    while not ended.all():
        assert lockstep.steps < 3000, "a Pong episode of random play ends long before this"
        timestep = lockstep.step()
        ended |= np.array(timestep.terminated)
        scored |= any(reward != 0 for reward in timestep.rewards)
        assert not any(timestep.truncated)
    timestep = lockstep.step()
    assert any(timestep.is_first)
    assert scored
    # Frames differ from step to step: the stack holds the last four.
    frames = observations_of(timestep)[0]
    assert frames.shape == (4, 84, 84) and frames.any()
    lockstep.close()


def test_rgb_stacks_arrive_as_frames_times_channels_first(client):
    """Gymnasium stacks RGB frames as [frames, H, W, 3]; the bridge sends
    them as [frames * 3, H, W], the last three channels the newest frame."""
    lockstep = Lockstep(client, "ALE/Pong-v5", 1, standard_atari(grayscale=False, frame_stack=3, screen_size=64))
    assert lockstep.reference.single_observation_space.shape == (3, 64, 64, 3)
    assert list(lockstep.spec.observation_shape) == [9, 64, 64]
    lockstep.reset()
    for _ in range(20):
        timestep = lockstep.step()
    newest = lockstep.reference.envs[0].obs_queue[-1]
    np.testing.assert_array_equal(observations_of(timestep)[0, 6:9], newest.transpose(2, 0, 1))
    lockstep.close()


def test_lost_life_ends_the_episode_but_not_the_game(client):
    """Breakout with episodic life: each lost life is a terminated episode,
    the next episode continues the same game (one no-op agent step later,
    lives not restored); only the end of the game resets it."""
    lockstep = Lockstep(client, "ALE/Breakout-v5", 1, standard_atari(episodic_life=True))
    lockstep.reset()
    ale = lockstep.ale()
    assert ale.lives() == 5
    life_losses = 0
    game_over = False
    while not game_over:
        assert lockstep.steps < 5000, "a game of random Breakout ends long before this"
        lives_before = ale.lives()
        timestep = lockstep.step()
        if not timestep.terminated[0]:
            continue
        frame_at_end = ale.getEpisodeFrameNumber()
        game_over = ale.game_over()
        timestep = lockstep.step()
        assert timestep.is_first[0]
        if game_over:
            # A real reset: all lives back, only the no-op starts played.
            assert ale.lives() == 5
            assert ale.getEpisodeFrameNumber() <= 30
        else:
            life_losses += 1
            assert ale.lives() == lives_before - 1
            # The game went on for one no-op agent step.
            assert ale.getEpisodeFrameNumber() == frame_at_end + 4
    assert life_losses == 4
    lockstep.close()


def test_frame_limit_ends_an_episode_truncated(client):
    """400 emulator frames are 100 agent steps at frame skip 4 (no no-op
    starts, which would count too)."""
    lockstep = Lockstep(client, "ALE/Pong-v5", 1, standard_atari(max_episode_frames=400, noop_max=0))
    lockstep.reset()
    for step in range(1, 101):
        timestep = lockstep.step()
        assert not timestep.terminated[0]
        assert timestep.truncated[0] == (step == 100), step
    assert lockstep.ale().getEpisodeFrameNumber() == 400
    timestep = lockstep.step()
    assert timestep.is_first[0] and not timestep.truncated[0]
    lockstep.close()


def test_options_the_preprocessing_sets_are_refused(client):
    expect_refused(
        lambda: client.open("ALE/Pong-v5", 1, 0, atari=standard_atari(), frameskip=4),
        '"ALE/Pong-v5"',
        "['frameskip']",
        "set by the atari preprocessing",
    )
