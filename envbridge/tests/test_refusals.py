"""Requests the bridge cannot serve end the stream with INVALID_ARGUMENT and
a message that says why."""

from __future__ import annotations

import numpy as np
import pytest

from fleet_envbridge import fleet_pb2

from conftest import expect_refused, standard_atari


def test_dict_observations_are_refused_naming_env_and_space(client):
    expect_refused(
        lambda: client.open("fleet-test/DictObservation-v0", 2, 0),
        '"fleet-test/DictObservation-v0"',
        "observation space Dict(",
        "is not supported",
    )


def test_unknown_id_is_refused_naming_it(client):
    details = expect_refused(lambda: client.open("NoSuchEnvironment-v3", 1, 0), '"NoSuchEnvironment-v3"')
    assert "could not be made by gymnasium" in details


def test_actions_of_the_wrong_length_are_refused(client):
    client.open("CartPole-v1", 3, 0)
    client.reset()
    expect_refused(lambda: client.step(np.array([0, 1], np.int64)), "shape [3]", "got i64 [2]")


def test_actions_of_the_wrong_dtype_are_refused(client):
    client.open("CartPole-v1", 2, 0)
    client.reset()
    expect_refused(lambda: client.step(np.array([0.0, 1.0], np.float32)), "i64", "got f32 [2]")


def test_actions_out_of_range_are_refused(client):
    client.open("CartPole-v1", 2, 0)
    client.reset()
    expect_refused(lambda: client.step(np.array([0, 2], np.int64)), "action 2 of env 1 is not in 0..2")


def test_tensors_whose_data_does_not_fill_their_shape_are_refused(client):
    client.open("CartPole-v1", 2, 0)
    client.reset()
    short = fleet_pb2.Tensor(dtype=fleet_pb2.DTYPE_I64, shape=[2], data=b"\0" * 8)
    expect_refused(lambda: client.step_tensor(short), "needs 16 bytes", "got 8")


def test_step_before_open_is_refused(client):
    expect_refused(lambda: client.step(np.array([0], np.int64)), "step before open")


def test_step_before_reset_is_refused(client):
    client.open("CartPole-v1", 1, 0)
    expect_refused(lambda: client.step(np.array([0], np.int64)), "step before reset")


def test_second_open_is_refused(client):
    client.open("CartPole-v1", 1, 0)
    expect_refused(lambda: client.open("CartPole-v1", 1, 0), "already serves", '"CartPole-v1"')


def test_options_the_open_message_sets_are_refused(client):
    expect_refused(lambda: client.open("CartPole-v1", 1, 0, vectorization_mode="async"), "['vectorization_mode']")


def test_zero_environments_are_refused(client):
    expect_refused(lambda: client.open("CartPole-v1", 0, 0), "num_envs must be at least 1")


def test_atari_preprocessing_of_a_game_that_is_not_atari_is_refused(client):
    details = expect_refused(
        lambda: client.open("CartPole-v1", 1, 0, atari=standard_atari()), '"CartPole-v1"', "needs an ALE game"
    )
    assert "CartPole" in details


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"frame_stack": 0}, "atari.frame_stack must be at least 1"),
        ({"frame_skip": 0}, "atari.frame_skip must be at least 1"),
        ({"screen_size": 0}, "atari.screen_size must be at least 1"),
        ({"repeat_action_probability": 1.5}, "atari.repeat_action_probability must be in [0, 1]"),
        ({"repeat_action_probability": -0.25}, "atari.repeat_action_probability must be in [0, 1]"),
    ],
)
def test_atari_settings_no_backend_can_follow_are_refused(client, change, fragment):
    atari = standard_atari(**change)
    expect_refused(lambda: client.open("ALE/Pong-v5", 1, 0, atari=atari), '"ALE/Pong-v5"', fragment)
