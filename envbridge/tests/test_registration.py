"""ALE and MinAtar ids can be made without importing their packages first,
and a missing package is named with what to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fleet_envbridge import registration

from conftest import expect_refused

# A fresh interpreter, in which nothing has registered the namespaces yet.
MAKE_WITHOUT_IMPORTS = """
import sys
import gymnasium
from fleet_envbridge.vector import EnvVector
assert "{module}" not in sys.modules
assert not any(spec.namespace == "{namespace}" for spec in gymnasium.registry.values())
vector = EnvVector("{env_id}", 1, 0)
vector.reset()
print(vector.action.num_actions)
"""


@pytest.mark.parametrize(
    "module, namespace, env_id, num_actions",
    [("ale_py", "ALE", "ALE/Breakout-v5", 4), ("minatar", "MinAtar", "MinAtar/Breakout-v1", 3)],
)
def test_namespaces_register_on_first_use(module, namespace, env_id, num_actions):
    pytest.importorskip(module)
    script = MAKE_WITHOUT_IMPORTS.format(module=module, namespace=namespace, env_id=env_id)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(num_actions)


def test_a_missing_package_is_named_with_its_install(client, monkeypatch):
    # As if ale-py were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "ale_py", None)
    monkeypatch.setattr(registration, "is_registered", lambda namespace: False)
    expect_refused(
        lambda: client.open("ALE/Pong-v5", 1, 0), '"ALE/Pong-v5"', "pip install fleet-envbridge[atari]"
    )


def test_every_namespace_names_an_extra_the_package_has():
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    for namespace, entry in registration.NAMESPACES.items():
        prefix = "pip install fleet-envbridge["
        assert entry.install.startswith(prefix) and entry.install.endswith("]"), namespace
        assert entry.install[len(prefix) : -1] in extras, namespace
