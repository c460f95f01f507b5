"""Registers the Gymnasium namespaces of optional packages on first use, so that
ids such as "ALE/Pong-v5" or "MinAtar/Breakout-v1" can be made without the
client (or whoever starts the bridge) importing anything first.

Gymnasium only knows an id once the package that provides it has registered
it. `NAMESPACES` says, per namespace, how to register it and which extra of
this package installs what that takes.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Callable

import gymnasium
from gymnasium.envs.registration import parse_env_id

from .errors import InvalidRequest


def register_ale() -> None:
    ale_py = importlib.import_module("ale_py")
    # Importing ale_py registers its ids; the call states that intent.
    gymnasium.register_envs(ale_py)


def register_minatar() -> None:
    importlib.import_module("minatar.gym").register_envs()


@dataclass(frozen=True)
class Namespace:
    """How to register one namespace's ids."""

    register: Callable[[], None]
    # What to install when `register` cannot import its package.
    install: str


NAMESPACES: dict[str, Namespace] = {
    "ALE": Namespace(register_ale, "pip install fleet-envbridge[atari]"),
    "MinAtar": Namespace(register_minatar, "pip install fleet-envbridge[minatar]"),
}

# Streams open vectors from several threads; registering twice would only
# warn, but the check and the registration belong together.
_lock = threading.Lock()


def is_registered(namespace: str) -> bool:
    return any(spec.namespace == namespace for spec in gymnasium.registry.values())


def ensure_registered(env_id: str, gym_id: str) -> None:
    """Registers the namespace of `gym_id` (the Gymnasium id that `env_id`, as
    the client wrote it, names) if `NAMESPACES` knows it and it is not
    registered yet; `InvalidRequest` saying what to install if its package
    is missing. Ids of other namespaces are left for Gymnasium to judge."""
    try:
        namespace, _, _ = parse_env_id(gym_id)
    except gymnasium.error.Error:
        return
    entry = NAMESPACES.get(namespace)
    if entry is None:
        return
    with _lock:
        if is_registered(namespace):
            return
        try:
            entry.register()
        except ImportError as error:
            raise InvalidRequest(
                f'env "{env_id}": the {namespace} namespace needs a package that is not installed '
                f"({error}); {entry.install}"
            ) from error
