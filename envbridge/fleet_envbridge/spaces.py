"""How Gymnasium spaces map onto what the Env protocol sends, and back.

Observations travel as one tensor for the whole vector:

- a Box of floats (any float dtype) as f32 of the Box's shape;
- a Box of bools of rank 3 (MinAtar's height × width × channels grids) as a
  u8 image, channels first, each cell 0 or 255: fleet scales images by
  1/255, so the network reads 0 and 1, and a grid costs a byte a cell;
- a Box of bools of another rank as f32 0/1 of the Box's shape;
- a Box of uint8 of rank 3 as a u8 image, channels first: a Box whose last
  axis has at most 4 entries and whose first has more is taken as
  height × width × channels and transposed to channels × height × width;
- a Box of uint8 of rank 2 (a grey image) as a u8 image of one channel;
- a Box of uint8 of rank 4 whose last axis has at most 4 entries (a stack of
  height × width × channels frames, as Gymnasium's `FrameStackObservation`
  makes of RGB frames) as one u8 image whose channels are the frames'
  channels in order, frame by frame: frames × channels, height, width;
- a Discrete as a one-hot f32 vector, as Gymnasium's `spaces.flatten` does.

Stacks of frames whose layout is known (the Atari preprocessing's) skip the
guess about which axis holds the channels: see `frame_stack_layout`.

Actions are a Discrete (fleet sends indices from 0; the space's `start` is
added here) or a Box of floats (continuous, passed through unclipped). Every
other space is refused. Nothing here knows about gRPC or how environments
are stepped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from .errors import InvalidRequest

OBSERVATIONS_SUPPORTED = "Box of uint8 images, Box of floats, Box of bools or Discrete are"
ACTIONS_SUPPORTED = "Discrete or Box of floats are"

# A uint8 image whose last axis is at most this long (and whose first axis is
# longer) is channels-last: grey, RGB or RGBA.
MAX_CHANNELS_LAST = 4


@dataclass(frozen=True)
class ObservationLayout:
    """How one environment's observations are sent."""

    # "f32" or "u8".
    dtype: str
    # Shape of one observation as sent (after any transpose).
    shape: tuple[int, ...]
    # Image given height × width × channels, sent channels first.
    channels_last: bool = False
    # Grey image given height × width, sent with a channel axis of 1.
    add_channel_axis: bool = False
    # Stack of images given frames × height × width × channels, sent as
    # (frames × channels) × height × width.
    stacked_channels_last: bool = False
    # Bool cells sent as 0 or 255.
    cells: bool = False
    # Number of values of a Discrete observation sent one-hot (0: not one).
    one_hot_size: int = 0
    # The Discrete observation's first value.
    one_hot_start: int = 0

    def to_wire(self, batch: np.ndarray) -> np.ndarray:
        """The vector's observations `[N, ...]` as sent: a contiguous
        little-endian array of shape `[N, *shape]`."""
        batch = np.asarray(batch)
        num_envs = batch.shape[0]
        if self.one_hot_size:
            one_hot = np.zeros((num_envs, self.one_hot_size), dtype="<f4")
            one_hot[np.arange(num_envs), batch.reshape(num_envs) - self.one_hot_start] = 1.0
            return one_hot
        if self.dtype == "u8":
            if self.cells:
                batch = batch.astype(np.uint8) * np.uint8(255)
            if self.channels_last:
                batch = batch.transpose(0, 3, 1, 2)
            elif self.stacked_channels_last:
                batch = batch.transpose(0, 1, 4, 2, 3)
            return np.ascontiguousarray(batch, dtype=np.uint8).reshape((num_envs, *self.shape))
        return np.ascontiguousarray(batch, dtype="<f4").reshape((num_envs, *self.shape))


@dataclass(frozen=True)
class ActionLayout:
    """What one environment's action is."""

    # Number of discrete actions; 0 for continuous actions.
    num_actions: int = 0
    # The Discrete space's first action, added to the index fleet sends.
    discrete_start: int = 0
    # Shape and bounds of one continuous action.
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    # The dtype the environment takes continuous actions in.
    continuous_dtype: str = "float32"

    @property
    def is_discrete(self) -> bool:
        return self.num_actions > 0

    def to_env(self, actions: np.ndarray, num_envs: int) -> np.ndarray:
        """Checks the vector's actions as received (i64 `[N]` or f32
        `[N, *shape]`) and converts them to what the environments take."""
        if self.is_discrete:
            if actions.dtype != np.int64 or actions.shape != (num_envs,):
                raise InvalidRequest(
                    f"step: discrete actions must be an i64 tensor of shape [{num_envs}], "
                    f"got {describe_array(actions)}"
                )
            out_of_range = np.flatnonzero((actions < 0) | (actions >= self.num_actions))
            if out_of_range.size:
                env_index = int(out_of_range[0])
                raise InvalidRequest(
                    f"step: action {int(actions[env_index])} of env {env_index} is not in "
                    f"0..{self.num_actions}"
                )
            return actions + self.discrete_start
        expected = (num_envs, *self.shape)
        if actions.dtype != np.float32 or actions.shape != expected:
            raise InvalidRequest(
                f"step: continuous actions must be an f32 tensor of shape {list(expected)}, "
                f"got {describe_array(actions)}"
            )
        return actions.astype(self.continuous_dtype)


def describe_array(array: np.ndarray) -> str:
    """An array's element type and shape in the protocol's words, e.g. `f32 [4, 2]`."""
    names = {np.dtype(np.float32): "f32", np.dtype(np.uint8): "u8", np.dtype(np.int64): "i64"}
    return f"{names.get(array.dtype, str(array.dtype))} {list(array.shape)}"


def observation_layout(env_id: str, space: spaces.Space) -> ObservationLayout:
    """How observations of `space` are sent, or `InvalidRequest` naming the
    env and the space when they cannot be."""
    if isinstance(space, spaces.Discrete):
        return ObservationLayout(
            dtype="f32", shape=(int(space.n),), one_hot_size=int(space.n), one_hot_start=int(space.start)
        )
    if isinstance(space, spaces.Box):
        shape = tuple(int(d) for d in space.shape)
        if space.dtype == np.bool_ and len(shape) == 3:
            height, width, channels = shape
            return ObservationLayout(dtype="u8", shape=(channels, height, width), channels_last=True, cells=True)
        if np.issubdtype(space.dtype, np.floating) or space.dtype == np.bool_:
            return ObservationLayout(dtype="f32", shape=shape)
        if space.dtype == np.uint8 and len(shape) == 2:
            return ObservationLayout(dtype="u8", shape=(1, *shape), add_channel_axis=True)
        if space.dtype == np.uint8 and len(shape) == 3:
            if shape[2] <= MAX_CHANNELS_LAST < shape[0]:
                height, width, channels = shape
                return ObservationLayout(dtype="u8", shape=(channels, height, width), channels_last=True)
            return ObservationLayout(dtype="u8", shape=shape)
        if space.dtype == np.uint8 and len(shape) == 4 and shape[3] <= MAX_CHANNELS_LAST:
            return stacked_channels_last_layout(shape)
    raise InvalidRequest(
        f'env "{env_id}": observation space {space} is not supported ({OBSERVATIONS_SUPPORTED})'
    )


def frame_stack_layout(env_id: str, space: spaces.Space) -> ObservationLayout:
    """How a stack of uint8 frames is sent, its layout being known rather than
    guessed: frames × height × width (grey, or channels already first as
    envpool stacks them) is sent as it is, frames × height × width × channels
    as (frames × channels) × height × width."""
    if isinstance(space, spaces.Box) and space.dtype == np.uint8:
        shape = tuple(int(d) for d in space.shape)
        if len(shape) == 3:
            return ObservationLayout(dtype="u8", shape=shape)
        if len(shape) == 4:
            return stacked_channels_last_layout(shape)
    raise InvalidRequest(f'env "{env_id}": observation space {space} is not a stack of uint8 frames')


def stacked_channels_last_layout(shape: tuple[int, ...]) -> ObservationLayout:
    frames, height, width, channels = shape
    return ObservationLayout(dtype="u8", shape=(frames * channels, height, width), stacked_channels_last=True)


def action_layout(env_id: str, space: spaces.Space) -> ActionLayout:
    """What actions in `space` are, or `InvalidRequest` naming the env and
    the space when fleet cannot send them."""
    if isinstance(space, spaces.Discrete):
        return ActionLayout(num_actions=int(space.n), discrete_start=int(space.start))
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
        return ActionLayout(
            shape=tuple(int(d) for d in space.shape),
            low=tuple(float(v) for v in np.ravel(space.low)),
            high=tuple(float(v) for v in np.ravel(space.high)),
            continuous_dtype=str(space.dtype),
        )
    raise InvalidRequest(f'env "{env_id}": action space {space} is not supported ({ACTIONS_SUPPORTED})')
