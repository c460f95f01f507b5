"""Image observations arrive channels first and continuous actions reach the
environment, over the bridge and in the space translation alone."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from fleet_envbridge import InvalidRequest, fleet_pb2
from fleet_envbridge.spaces import action_layout, frame_stack_layout, observation_layout

from conftest import PaintEnv, observations_of


def painted(count: int) -> np.ndarray:
    """PaintEnv's image after `count` steps, channels first."""
    env = PaintEnv()
    env.count = count
    return env.image().transpose(2, 0, 1)


def test_images_are_channels_first_and_continuous_actions_arrive(client):
    spec = client.open("fleet-test/Paint-v0", 2, 0)
    assert spec.observation_dtype == fleet_pb2.DTYPE_U8
    assert list(spec.observation_shape) == [3, 6, 5]
    assert spec.num_actions == 0
    assert list(spec.action_shape) == [2]
    assert list(spec.action_low) == [-1.0, -2.0]
    assert list(spec.action_high) == [1.0, 2.0]

    timestep = client.reset()
    assert list(timestep.observations.shape) == [2, 3, 6, 5]
    np.testing.assert_array_equal(observations_of(timestep), np.stack([painted(0)] * 2))

    actions = np.array([[0.5, 0.25], [1.0, -2.0]], dtype=np.float32)
    for count in (1, 2, 3):
        timestep = client.step(actions)
        np.testing.assert_array_equal(observations_of(timestep), np.stack([painted(count)] * 2))
        assert list(timestep.rewards) == [0.75, -1.0]
        assert list(timestep.terminated) == [count == 3] * 2
        assert list(timestep.is_first) == [False] * 2

    timestep = client.step(actions)
    np.testing.assert_array_equal(observations_of(timestep), np.stack([painted(0)] * 2))
    assert list(timestep.rewards) == [0.0, 0.0]
    assert list(timestep.is_first) == [True, True]
    assert list(timestep.terminated) == [False, False]


def test_observation_layouts():
    grey = observation_layout("grey", spaces.Box(0, 255, (84, 84), np.uint8))
    assert (grey.dtype, grey.shape) == ("u8", (1, 84, 84))
    frames = np.arange(2 * 84 * 84, dtype=np.uint8).reshape(2, 84, 84)
    np.testing.assert_array_equal(grey.to_wire(frames), frames.reshape(2, 1, 84, 84))

    stacked = observation_layout("stacked", spaces.Box(0, 255, (4, 84, 84), np.uint8))
    assert (stacked.shape, stacked.channels_last) == ((4, 84, 84), False)

    rgb = observation_layout("rgb", spaces.Box(0, 255, (210, 160, 3), np.uint8))
    assert (rgb.shape, rgb.channels_last) == ((3, 210, 160), True)

    doubles = observation_layout("doubles", spaces.Box(-1.0, 1.0, (2, 3), np.float64))
    wire = doubles.to_wire(np.linspace(-1, 1, 12).reshape(2, 2, 3))
    assert (wire.dtype, wire.shape) == (np.dtype("<f4"), (2, 2, 3))

    cells = observation_layout("cells", spaces.Discrete(4, start=2))
    np.testing.assert_array_equal(cells.to_wire(np.array([2, 5])), [[1, 0, 0, 0], [0, 0, 0, 1]])

    grid = observation_layout("grid", spaces.Box(0, 1, (10, 10, 4), np.bool_))
    assert (grid.dtype, grid.shape) == ("u8", (4, 10, 10))
    cells_on = np.random.default_rng(0).random((2, 10, 10, 4)) < 0.3
    wire = grid.to_wire(cells_on)
    assert (wire.dtype, wire.shape) == (np.dtype(np.uint8), (2, 4, 10, 10))
    np.testing.assert_array_equal(wire, cells_on.transpose(0, 3, 1, 2) * 255)

    row = observation_layout("row", spaces.Box(0, 1, (5,), np.bool_))
    assert (row.dtype, row.shape) == ("f32", (5,))
    np.testing.assert_array_equal(row.to_wire(cells_on[:, 0, :5, 0]), cells_on[:, 0, :5, 0].astype(np.float32))


def test_stacks_of_channels_last_frames_are_sent_frame_by_frame():
    space = spaces.Box(0, 255, (4, 6, 5, 3), np.uint8)
    stacked = observation_layout("stack", space)
    assert stacked.shape == (12, 6, 5)
    assert frame_stack_layout("stack", space) == stacked
    frames = np.arange(2 * 4 * 6 * 5 * 3).astype(np.uint8).reshape(2, 4, 6, 5, 3)
    wire = stacked.to_wire(frames)
    assert wire.shape == (2, 12, 6, 5)
    for frame in range(4):
        for channel in range(3):
            np.testing.assert_array_equal(wire[:, frame * 3 + channel], frames[:, frame, :, :, channel])


def test_known_frame_stacks_are_not_guessed_to_be_channels_last():
    # Five 3 × 3 grey frames look like a 5 × 3 image of 3 channels to the guess.
    space = spaces.Box(0, 255, (5, 3, 3), np.uint8)
    assert observation_layout("guessed", space).shape == (3, 5, 3)
    layout = frame_stack_layout("known", space)
    assert (layout.shape, layout.channels_last) == ((5, 3, 3), False)
    with pytest.raises(InvalidRequest, match=r'env "floats": .* is not a stack of uint8 frames'):
        frame_stack_layout("floats", spaces.Box(0.0, 1.0, (4, 84, 84), np.float32))


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(0, 10, (3,), np.int32),
        spaces.Box(0, 255, (128,), np.uint8),
        spaces.MultiDiscrete([2, 3]),
        spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))),
    ],
)
def test_other_observation_spaces_are_refused(space):
    with pytest.raises(InvalidRequest, match=r'env "odd": observation space .* is not supported'):
        observation_layout("odd", space)


def test_discrete_actions_start_where_the_space_does():
    layout = action_layout("shifted", spaces.Discrete(3, start=-1))
    np.testing.assert_array_equal(layout.to_env(np.array([0, 2], np.int64), 2), [-1, 1])
    with pytest.raises(InvalidRequest, match="action 3 of env 1 is not in 0..3"):
        layout.to_env(np.array([0, 3], np.int64), 2)
    with pytest.raises(InvalidRequest, match=r'env "multi": action space MultiDiscrete'):
        action_layout("multi", spaces.MultiDiscrete([2, 2]))
