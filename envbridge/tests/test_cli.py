"""The fleet-envbridge command announces its address, serves, and stops on SIGTERM
(or, when asked, once its parent closes its stdin)."""

from __future__ import annotations

import select
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest

from fleet_envbridge import fleet_pb2, fleet_pb2_grpc

from conftest import EnvClient, observations_of

STARTUP_TIMEOUT_SECONDS = 60


def run_bridge(listen: str, *flags: str):
    """Starts the command; returns it and the address from its first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet_envbridge.cli", "--listen", listen, "--log-level", "WARNING", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT_SECONDS)
    if not ready:
        process.kill()
        pytest.fail("fleet-envbridge printed nothing")
    line = process.stdout.readline().strip()
    prefix = "listening on "
    assert line.startswith(prefix), line
    return process, line[len(prefix) :]


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "unix"])
def test_cli_announces_serves_and_stops(listen, tmp_path):
    if listen == "unix":
        listen = f"unix:{tmp_path}/bridge.sock"
    process, address = run_bridge(listen)
    try:
        if listen.endswith(":0"):
            host, port = address.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
        else:
            assert address == listen
        with grpc.insecure_channel(address) as channel:
            client = EnvClient(fleet_pb2_grpc.EnvStub(channel))
            spec = client.open("CartPole-v1", 2, 1)
            assert spec.num_actions == 2
            timestep = client.reset()
            assert observations_of(timestep).shape == (2, 4)
            timestep = client.step(np.array([0, 1], np.int64))
            assert list(timestep.rewards) == [1.0, 1.0]
            client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_with_exit_with_stdin_stops_when_its_parent_goes():
    process, _ = run_bridge("127.0.0.1:0", "--exit-with-stdin")
    try:
        assert process.poll() is None
        process.stdin.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
