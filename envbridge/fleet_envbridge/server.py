"""The `fleet.v1.Env` gRPC service: one vector of environments per stream.

Each stream owns its vector and a thread of the server's pool for as long as
it is open, so the pool's size bounds the vectors served at once; streams
beyond it are refused with RESOURCE_EXHAUSTED. Requests that cannot be
served end the stream with INVALID_ARGUMENT; an environment that raises
while stepping ends it with INTERNAL.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Iterator

import grpc

from . import fleet_pb2, fleet_pb2_grpc
from .errors import InvalidRequest
from .vector import EnvVector
from .wire import array_from_tensor, atari_settings, spec_message, timestep_message

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_STREAMS = 64


class EnvStream:
    """One stream's state: its vector once opened. Answers requests one at a
    time, raising `InvalidRequest` for those it cannot serve."""

    def __init__(self) -> None:
        self.vector: EnvVector | None = None

    def answer(self, request: fleet_pb2.EnvRequest) -> fleet_pb2.EnvResponse:
        kind = request.WhichOneof("kind")
        if kind == "open":
            return self.open(request.open)
        if self.vector is None:
            raise InvalidRequest(f"{kind or 'an empty request'} before open: the first message must be open")
        if kind == "reset":
            return timestep_message(self.vector.reset(), self.vector.observation)
        if kind == "step":
            return self.step(request.step)
        raise InvalidRequest("request has no kind (open, reset or step)")

    def open(self, request: fleet_pb2.EnvOpen) -> fleet_pb2.EnvResponse:
        if self.vector is not None:
            raise InvalidRequest(f'open: this stream already serves env "{self.vector.env_id}"; open it once')
        atari = atari_settings(request.atari) if request.HasField("atari") else None
        self.vector = EnvVector(request.env_id, request.num_envs, request.seed, dict(request.options), atari)
        log.info(
            "opened env_id=%s num_envs=%d seed=%d backend=%s atari=%s",
            request.env_id,
            request.num_envs,
            request.seed,
            self.vector.backend,
            atari,
        )
        return spec_message(self.vector.observation, self.vector.action, self.vector.num_envs, self.vector.backend)

    def step(self, request: fleet_pb2.EnvStep) -> fleet_pb2.EnvResponse:
        vector = self.vector
        if not vector.has_reset:
            raise InvalidRequest("step before reset: reset the vector once before stepping it")
        actions = vector.action.to_env(array_from_tensor(request.actions, "step: actions"), vector.num_envs)
        return timestep_message(vector.step(actions), vector.observation)

    def close(self) -> None:
        if self.vector is not None:
            self.vector.close()
            self.vector = None


class EnvService(fleet_pb2_grpc.EnvServicer):
    """Serves `Env.Run`."""

    def Run(
        self, request_iterator: Iterator[fleet_pb2.EnvRequest], context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.EnvResponse]:
        stream = EnvStream()
        try:
            for request in request_iterator:
                try:
                    response = stream.answer(request)
                except InvalidRequest as error:
                    log.info("refused: %s", error)
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                except Exception as error:
                    env_id = stream.vector.env_id if stream.vector else "?"
                    log.exception("env %s failed", env_id)
                    context.abort(grpc.StatusCode.INTERNAL, f'env "{env_id}" failed: {type(error).__name__}: {error}')
                yield response
        finally:
            stream.close()


def serve(
    address: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> tuple[grpc.Server, str]:
    """Starts the service on `address` (`host:port`, port 0 picks a free
    one, or `unix:/path`); returns the server and the address it listens on."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # The actor pings a quiet connection every 10 s (KEEPALIVE_INTERVAL in
        # proto/src/connect.rs) to learn when a bridge stops answering, also
        # while a stream waits and no call is open. gRPC's own default
        # answers pings more often than every 5 minutes with GOAWAY
        # "too_many_pings"; accept them down to 5 s.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="env-stream"),
        options=options,
        maximum_concurrent_rpcs=max_streams,
    )
    fleet_pb2_grpc.add_EnvServicer_to_server(EnvService(), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    server.start()
    if address.startswith("unix:"):
        return server, address
    host = address.rsplit(":", 1)[0]
    return server, f"{host}:{port}"
