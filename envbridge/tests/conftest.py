"""Fixtures for the bridge's tests: a server on a free port, a client for
its bidirectional stream, and small environments with spaces CartPole lacks."""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

import grpc
import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from fleet_envbridge import fleet_pb2, fleet_pb2_grpc, serve
from fleet_envbridge.atari import STANDARD


class EnvClient:
    """One `Env.Run` stream, driven one request and one answer at a time."""

    def __init__(self, stub: fleet_pb2_grpc.EnvStub):
        self._requests: queue.Queue = queue.Queue()
        self._responses = stub.Run(iter(self._requests.get, None))

    def send(self, request: fleet_pb2.EnvRequest) -> fleet_pb2.EnvResponse:
        self._requests.put(request)
        return next(self._responses)

    def open(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        *,
        atari: fleet_pb2.AtariPreprocessing | None = None,
        **options: Any,
    ) -> fleet_pb2.EnvSpecMessage:
        request = fleet_pb2.EnvRequest(
            open=fleet_pb2.EnvOpen(
                env_id=env_id,
                num_envs=num_envs,
                seed=seed,
                options={k: str(v) for k, v in options.items()},
                atari=atari,
            )
        )
        return self.send(request).spec

    def reset(self) -> fleet_pb2.EnvTimestep:
        return self.send(fleet_pb2.EnvRequest(reset=fleet_pb2.EnvReset())).timestep

    def step_tensor(self, actions: fleet_pb2.Tensor) -> fleet_pb2.EnvTimestep:
        return self.send(fleet_pb2.EnvRequest(step=fleet_pb2.EnvStep(actions=actions))).timestep

    def step(self, actions: np.ndarray) -> fleet_pb2.EnvTimestep:
        dtype = fleet_pb2.DTYPE_I64 if actions.dtype == np.int64 else fleet_pb2.DTYPE_F32
        little_endian = actions.astype(actions.dtype.newbyteorder("<"))
        return self.step_tensor(fleet_pb2.Tensor(dtype=dtype, shape=actions.shape, data=little_endian.tobytes()))

    def close(self) -> None:
        self._requests.put(None)


def standard_atari(**changes: Any) -> fleet_pb2.AtariPreprocessing:
    """The Atari preprocessing of Machado et al. (2018), with `changes`."""
    return fleet_pb2.AtariPreprocessing(**{**dataclasses.asdict(STANDARD), **changes})


def observations_of(timestep: fleet_pb2.EnvTimestep) -> np.ndarray:
    """The timestep's observations tensor as an array of its shape."""
    dtype = {fleet_pb2.DTYPE_F32: "<f4", fleet_pb2.DTYPE_U8: "u1"}[timestep.observations.dtype]
    return np.frombuffer(timestep.observations.data, dtype=dtype).reshape(tuple(timestep.observations.shape))


@pytest.fixture(scope="session")
def address() -> str:
    server, bound = serve("127.0.0.1:0")
    yield bound
    server.stop(None)


@pytest.fixture
def client(address: str) -> EnvClient:
    channel = grpc.insecure_channel(address)
    env_client = EnvClient(fleet_pb2_grpc.EnvStub(channel))
    yield env_client
    env_client.close()
    channel.close()


def expect_refused(call, *fragments: str) -> str:
    """Runs `call`, which must fail with INVALID_ARGUMENT; checks the message
    holds every fragment and returns it."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    details = raised.value.details()
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


class DictObservationEnv(gymnasium.Env):
    """An environment whose observations are a Dict, which fleet cannot take."""

    observation_space = spaces.Dict({"position": spaces.Box(-1.0, 1.0, (2,), np.float32)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"position": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"position": np.zeros(2, np.float32)}, 0.0, False, False, {}


class PaintEnv(gymnasium.Env):
    """A height × width × channels uint8 image whose pixels encode the step
    count, the channel and the position; continuous actions of 2 values are
    echoed as the reward (their sum) and end the episode after 3 steps."""

    height, width, channels = 6, 5, 3
    observation_space = spaces.Box(0, 255, (height, width, channels), np.uint8)
    action_space = spaces.Box(np.array([-1.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32))

    def image(self) -> np.ndarray:
        h, w, c = np.meshgrid(np.arange(self.height), np.arange(self.width), np.arange(self.channels), indexing="ij")
        return (self.count * 50 + c * 20 + h * 5 + w).astype(np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return self.image(), {}

    def step(self, action):
        self.count += 1
        return self.image(), float(np.sum(action)), self.count == 3, False, {}


gymnasium.register(id="fleet-test/DictObservation-v0", entry_point=DictObservationEnv)
gymnasium.register(id="fleet-test/Paint-v0", entry_point=PaintEnv)
