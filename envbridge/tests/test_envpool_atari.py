"""The Atari preprocessing on envpool: the same spaces as on Gymnasium, the
frame limit counted in agent steps, and the settings envpool cannot follow
refused."""

from __future__ import annotations

import numpy as np
import pytest

from fleet_envbridge import fleet_pb2

from conftest import expect_refused, observations_of, standard_atari

pytest.importorskip("envpool")


def test_pong_has_the_same_spaces_as_on_gymnasium(client):
    spec = client.open("envpool:Pong-v5", 2, 1, atari=standard_atari())
    assert spec.backend == "envpool"
    assert spec.observation_dtype == fleet_pb2.DTYPE_U8
    assert list(spec.observation_shape) == [4, 84, 84]
    assert spec.num_actions == 6
    timestep = client.reset()
    assert observations_of(timestep).shape == (2, 4, 84, 84)
    timestep = client.step(np.array([0, 1], np.int64))
    assert observations_of(timestep).any()


def test_rgb_stacks_arrive_as_frames_times_channels_first(client):
    spec = client.open("envpool:Pong-v5", 1, 1, atari=standard_atari(grayscale=False, frame_stack=3, screen_size=64))
    assert list(spec.observation_shape) == [9, 64, 64]
    assert observations_of(client.reset()).shape == (1, 9, 64, 64)


def test_frame_limit_ends_an_episode_truncated_after_its_agent_steps(client):
    client.open("envpool:Pong-v5", 1, 1, atari=standard_atari(max_episode_frames=400))
    client.reset()
    for step in range(1, 101):
        timestep = client.step(np.array([0], np.int64))
        assert not timestep.terminated[0]
        assert timestep.truncated[0] == (step == 100), step
    assert client.step(np.array([0], np.int64)).is_first[0]


def test_no_op_starts_cannot_be_turned_off(client):
    expect_refused(
        lambda: client.open("envpool:Pong-v5", 1, 1, atari=standard_atari(noop_max=0)),
        '"envpool:Pong-v5"',
        "noop_max of at least 1",
    )


def test_games_that_are_not_atari_are_refused(client):
    expect_refused(
        lambda: client.open("envpool:CartPole-v1", 1, 1, atari=standard_atari()),
        '"envpool:CartPole-v1"',
        "needs an ALE game",
    )
