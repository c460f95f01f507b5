"""A vector of environments stepped in lockstep with next-step auto-reset,
the same for a Gymnasium vector and an envpool one.

When an environment's current observation is the last of its episode
(terminated or truncated), the next `step` resets it instead of acting: its
action is ignored, its reward is 0 and its observation is the next episode's
first (`is_first`). Both backends already reset on the next step; the flags
are tracked here so that every backend answers the same. Nothing here knows
about gRPC.

Seeding: the first `reset` seeds environment i with `seed + i` (Gymnasium's
convention); later resets continue each environment's random stream. envpool
fixes its seeds when it is made and takes int32 seeds, so there the seed is
first reduced modulo 2^31 - num_envs.

Gymnasium ids of namespaces that optional packages provide (ALE, MinAtar)
are registered on first use (`registration`); ALE games may be given the
standard Atari preprocessing on either backend (`atari`).
"""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from . import atari as atari_setup
from .atari import AtariSettings
from .errors import InvalidRequest
from .registration import ensure_registered
from .spaces import ActionLayout, ObservationLayout, action_layout, frame_stack_layout, observation_layout

GYMNASIUM = "gymnasium"
ENVPOOL = "envpool"
GYM_PREFIX = "gym:"
ENVPOOL_PREFIX = "envpool:"

# Options the open message itself sets.
RESERVED_OPTIONS = frozenset({"num_envs", "seed", "batch_size", "env_type", "vectorization_mode", "vector_kwargs"})

ENVPOOL_SEED_MODULUS = 2**31


@dataclass
class Timestep:
    """Every environment's current step, as the protocol sends it."""

    # [N, *observation shape], contiguous, little-endian.
    observations: np.ndarray
    # [N] f32 reward of the action that led to the current observation.
    rewards: np.ndarray
    # [N] the current observation starts an episode.
    is_first: np.ndarray
    # [N] the current observation is terminal.
    terminated: np.ndarray
    # [N] the current observation ends an episode cut by a time limit.
    truncated: np.ndarray


@functools.cache
def envpool_module() -> Any | None:
    """envpool, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module("envpool")
    except Exception:  # envpool imports gym and native code; any failure means "not here".
        return None


def resolve_backend(env_id: str) -> tuple[str, str]:
    """The backend that serves `env_id` and the id that backend knows.

    "envpool:" ids need envpool; "gym:" ids go to envpool when it is
    installed and lists the id, to Gymnasium otherwise; bare ids go to
    Gymnasium."""
    if env_id.startswith(ENVPOOL_PREFIX):
        task_id = env_id[len(ENVPOOL_PREFIX) :]
        if envpool_module() is None:
            raise InvalidRequest(f'env "{env_id}": envpool is not installed (pip install fleet-envbridge[envpool])')
        return ENVPOOL, task_id
    if env_id.startswith(GYM_PREFIX):
        gym_id = env_id[len(GYM_PREFIX) :]
        envpool = envpool_module()
        if envpool is not None and gym_id in envpool.list_all_envs():
            return ENVPOOL, gym_id
        return GYMNASIUM, gym_id
    return GYMNASIUM, env_id


def parse_options(env_id: str, options: dict[str, str]) -> dict[str, Any]:
    """Constructor keyword arguments from the open message's string options:
    JSON where a value parses (numbers, booleans, null, lists), the string
    itself otherwise."""
    reserved = sorted(RESERVED_OPTIONS.intersection(options))
    if reserved:
        raise InvalidRequest(f'env "{env_id}": options {reserved} are set by the open message itself')
    parsed = {}
    for key, text in options.items():
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key] = text
    return parsed


class EnvVector:
    """N environments of one id, reset together and stepped together."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        options: dict[str, str] | None = None,
        atari: AtariSettings | None = None,
    ):
        """Makes the vector, with the Atari preprocessing when `atari` is
        given; `InvalidRequest` if the id cannot be made (or is no ALE game
        while `atari` is given) or its spaces cannot be sent. Call `reset`
        before the first `step`."""
        if num_envs < 1:
            raise InvalidRequest(f'env "{env_id}": num_envs must be at least 1, got {num_envs}')
        self.env_id = env_id
        self.num_envs = num_envs
        self.seed = seed
        self.backend, backend_id = resolve_backend(env_id)
        kwargs = parse_options(env_id, options or {})
        if atari is not None:
            atari.check(env_id)
        if self.backend == GYMNASIUM:
            ensure_registered(env_id, backend_id)
        wrappers = None
        if atari is not None and self.backend == ENVPOOL:
            atari_setup.check_envpool_ale_id(env_id, backend_id, envpool_module())
            atari_setup.refuse_reserved_options(env_id, kwargs, atari_setup.ENVPOOL_ATARI_OPTIONS)
            kwargs.update(atari_setup.envpool_arguments(env_id, atari))
        elif atari is not None:
            atari_setup.check_gymnasium_ale_id(env_id, backend_id)
            atari_setup.refuse_reserved_options(env_id, kwargs, atari_setup.GYMNASIUM_ATARI_OPTIONS)
            wrappers, atari_kwargs = atari_setup.gymnasium_arguments(atari)
            kwargs.update(atari_kwargs)
        try:
            if self.backend == ENVPOOL:
                self._env = envpool_module().make(
                    backend_id,
                    env_type="gymnasium",
                    num_envs=num_envs,
                    seed=seed % (ENVPOOL_SEED_MODULUS - num_envs),
                    **kwargs,
                )
            else:
                self._env = gymnasium.make_vec(
                    backend_id,
                    num_envs=num_envs,
                    vectorization_mode="sync",
                    vector_kwargs=next_step_vector_kwargs(),
                    wrappers=wrappers,
                    **kwargs,
                )
        except Exception as error:
            raise InvalidRequest(
                f'env "{env_id}" could not be made by {self.backend}: {type(error).__name__}: {error}'
            ) from error
        try:
            # The preprocessing's stacks have a known layout: no guessing
            # which axis holds the channels.
            layout = frame_stack_layout if atari is not None else observation_layout
            self.observation: ObservationLayout = layout(env_id, self._env.single_observation_space)
            self.action: ActionLayout = action_layout(env_id, self._env.single_action_space)
        except InvalidRequest:
            self.close()
            raise
        self._seeded = False
        self._is_last = np.zeros(num_envs, dtype=bool)
        self._has_reset = False

    @property
    def has_reset(self) -> bool:
        """Whether `reset` has been called, so that `step` may be."""
        return self._has_reset

    def reset(self) -> Timestep:
        """Resets every environment; all observations are first ones."""
        if self.backend == GYMNASIUM and not self._seeded:
            observations, _ = self._env.reset(seed=self.seed)
        else:
            observations, _ = self._env.reset()
        self._seeded = True
        self._has_reset = True
        self._is_last[:] = False
        zeros = np.zeros(self.num_envs, dtype=bool)
        return Timestep(
            observations=self.observation.to_wire(observations),
            rewards=np.zeros(self.num_envs, dtype=np.float32),
            is_first=np.ones(self.num_envs, dtype=bool),
            terminated=zeros,
            truncated=zeros.copy(),
        )

    def step(self, actions: np.ndarray) -> Timestep:
        """Acts in every environment whose episode goes on and resets the
        others; `actions` are in the environments' own form
        (`ActionLayout.to_env`)."""
        is_first = self._is_last.copy()
        observations, rewards, terminated, truncated, _ = self._env.step(actions)
        rewards = np.array(rewards, dtype=np.float32).reshape(self.num_envs)
        terminated = np.array(terminated, dtype=bool).reshape(self.num_envs)
        truncated = np.array(truncated, dtype=bool).reshape(self.num_envs)
        rewards[is_first] = 0.0
        terminated[is_first] = False
        truncated[is_first] = False
        self._is_last = terminated | truncated
        return Timestep(
            observations=self.observation.to_wire(observations),
            rewards=rewards,
            is_first=is_first,
            terminated=terminated,
            truncated=truncated,
        )

    def close(self) -> None:
        self._env.close()


def next_step_vector_kwargs() -> dict[str, Any]:
    """Arguments that make a Gymnasium vector reset on the next step. That is
    the only mode of Gymnasium 1.0, which has no `AutoresetMode` to ask for."""
    autoreset_mode = getattr(gymnasium.vector, "AutoresetMode", None)
    if autoreset_mode is None:
        return {}
    return {"autoreset_mode": autoreset_mode.NEXT_STEP}
