"""Conversions between numpy arrays and the protocol's messages."""

from __future__ import annotations

import numpy as np

from . import fleet_pb2
from .atari import AtariSettings
from .errors import InvalidRequest
from .spaces import ActionLayout, ObservationLayout
from .vector import Timestep

# Little-endian element types of the protocol's dtypes.
NUMPY_DTYPES = {
    fleet_pb2.DTYPE_F32: np.dtype("<f4"),
    fleet_pb2.DTYPE_U8: np.dtype(np.uint8),
    fleet_pb2.DTYPE_I64: np.dtype("<i8"),
}
PROTO_DTYPES = {"f32": fleet_pb2.DTYPE_F32, "u8": fleet_pb2.DTYPE_U8}


def array_from_tensor(tensor: fleet_pb2.Tensor, what: str) -> np.ndarray:
    """The tensor as a native-endian array; `InvalidRequest` naming `what` if
    its dtype is unknown or its data does not fill its shape."""
    dtype = NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidRequest(f"{what}: unsupported tensor dtype {fleet_pb2.Dtype.Name(tensor.dtype)}")
    shape = tuple(int(d) for d in tensor.shape)
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(tensor.data) != expected_bytes:
        raise InvalidRequest(
            f"{what}: a tensor of shape {list(shape)} needs {expected_bytes} bytes of data, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def tensor_from_array(array: np.ndarray, dtype: int) -> fleet_pb2.Tensor:
    """One tensor holding the whole array (which must already be contiguous
    and of `dtype`'s little-endian element type)."""
    return fleet_pb2.Tensor(dtype=dtype, shape=array.shape, data=array.tobytes())


def atari_settings(message: fleet_pb2.AtariPreprocessing) -> AtariSettings:
    """The open message's Atari preprocessing."""
    return AtariSettings(
        frame_skip=message.frame_skip,
        screen_size=message.screen_size,
        grayscale=message.grayscale,
        frame_stack=message.frame_stack,
        noop_max=message.noop_max,
        repeat_action_probability=message.repeat_action_probability,
        episodic_life=message.episodic_life,
        max_episode_frames=message.max_episode_frames,
    )


def spec_message(
    observation: ObservationLayout, action: ActionLayout, num_envs: int, backend: str
) -> fleet_pb2.EnvResponse:
    """The answer to `open`."""
    return fleet_pb2.EnvResponse(
        spec=fleet_pb2.EnvSpecMessage(
            observation_dtype=PROTO_DTYPES[observation.dtype],
            observation_shape=observation.shape,
            num_actions=action.num_actions,
            action_shape=action.shape,
            action_low=action.low,
            action_high=action.high,
            num_envs=num_envs,
            backend=backend,
        )
    )


def timestep_message(timestep: Timestep, observation: ObservationLayout) -> fleet_pb2.EnvResponse:
    """The answer to `reset` and `step`."""
    return fleet_pb2.EnvResponse(
        timestep=fleet_pb2.EnvTimestep(
            observations=tensor_from_array(timestep.observations, PROTO_DTYPES[observation.dtype]),
            rewards=timestep.rewards.tolist(),
            is_first=timestep.is_first.tolist(),
            terminated=timestep.terminated.tolist(),
            truncated=timestep.truncated.tolist(),
        )
    )
