"""The standard Atari preprocessing (Machado et al. 2018), set up the same way
on Gymnasium (ale-py stepped frame by frame under Gymnasium's
`AtariPreprocessing` and `FrameStackObservation`) and on envpool (its own
Atari options).

Gymnasium's own episodic-life option (`terminal_on_life_loss`) ends the
episode at a lost life, and the vector's auto-reset would then restart the
whole game; `EpisodicLife` ends the episode for learning but lets the game
go on. Nothing here knows about gRPC.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium
from gymnasium.wrappers import AtariPreprocessing as GymnasiumAtariPreprocessing
from gymnasium.wrappers import FrameStackObservation

from .errors import InvalidRequest

# What makes an id an ALE game on either backend.
ALE_ENTRY_POINT = "ale_py.env:AtariEnv"
ENVPOOL_ATARI_MODULE = "envpool.atari"

# The ALE's no-op action, the first of every game's action set.
NOOP = 0

# envpool counts its limit in agent steps, as an int32; this one is never reached.
ENVPOOL_NO_STEP_LIMIT = 2**31 - 1

# Constructor arguments the preprocessing sets, which options may not override.
GYMNASIUM_ATARI_OPTIONS = frozenset(
    {"frameskip", "repeat_action_probability", "max_num_frames_per_episode", "obs_type"}
)
ENVPOOL_ATARI_OPTIONS = frozenset(
    {
        "img_height",
        "img_width",
        "stack_num",
        "gray_scale",
        "frame_skip",
        "noop_max",
        "repeat_action_probability",
        "episodic_life",
        "reward_clip",
        "max_episode_steps",
        "zero_discount_on_life_loss",
        "use_fire_reset",
    }
)


@dataclass(frozen=True)
class AtariSettings:
    """The open message's `atari` field."""

    frame_skip: int
    screen_size: int
    grayscale: bool
    frame_stack: int
    noop_max: int
    repeat_action_probability: float
    episodic_life: bool
    # 0: no limit.
    max_episode_frames: int

    def check(self, env_id: str) -> None:
        """`InvalidRequest` naming the env for settings no backend can follow."""
        for name in ("frame_skip", "screen_size", "frame_stack"):
            if getattr(self, name) == 0:
                raise InvalidRequest(f'env "{env_id}": atari.{name} must be at least 1')
        # Written so that NaN fails too.
        if not 0.0 <= self.repeat_action_probability <= 1.0:
            raise InvalidRequest(
                f'env "{env_id}": atari.repeat_action_probability must be in [0, 1], '
                f"got {self.repeat_action_probability}"
            )


# The setup of Machado et al. (2018), which published IMPALA, R2D2 and
# Sample Factory Atari results use (fleet's config/default.toml [env.atari]).
STANDARD = AtariSettings(
    frame_skip=4,
    screen_size=84,
    grayscale=True,
    frame_stack=4,
    noop_max=30,
    repeat_action_probability=0.25,
    episodic_life=False,
    max_episode_frames=108_000,
)


def refuse_reserved_options(env_id: str, options: dict[str, Any], reserved: frozenset[str]) -> None:
    clashes = sorted(reserved.intersection(options))
    if clashes:
        raise InvalidRequest(f'env "{env_id}": options {clashes} are set by the atari preprocessing')


def check_gymnasium_ale_id(env_id: str, gym_id: str) -> None:
    """`InvalidRequest` unless Gymnasium makes `gym_id` with ale-py."""
    try:
        spec = gymnasium.spec(gym_id)
    except gymnasium.error.Error as error:
        raise InvalidRequest(
            f'env "{env_id}" could not be made by gymnasium: {type(error).__name__}: {error}'
        ) from error
    if spec.entry_point != ALE_ENTRY_POINT:
        raise InvalidRequest(
            f'env "{env_id}": atari preprocessing needs an ALE game ("ALE/Pong-v5", "envpool:Pong-v5"); '
            f"this id is made by {spec.entry_point}"
        )


def check_envpool_ale_id(env_id: str, task_id: str, envpool: Any) -> None:
    """`InvalidRequest` unless envpool's `task_id` is one of its Atari games."""
    if envpool_import_path(envpool, task_id) != ENVPOOL_ATARI_MODULE:
        raise InvalidRequest(
            f'env "{env_id}": atari preprocessing needs an ALE game ("ALE/Pong-v5", "envpool:Pong-v5"); '
            f"envpool has no Atari game {task_id!r}"
        )


def envpool_import_path(envpool: Any, task_id: str) -> str | None:
    """The module envpool makes `task_id` from (its registry maps each task
    to that module, its spec class and its defaults), None if unknown."""
    registry = getattr(getattr(envpool, "registration", None), "registry", None)
    entry = getattr(registry, "specs", {}).get(task_id)
    return entry[0] if entry else None


Wrapper = Callable[[gymnasium.Env], gymnasium.Env]


def gymnasium_arguments(settings: AtariSettings) -> tuple[list[Wrapper], dict[str, Any]]:
    """The wrappers (innermost first) and constructor arguments that give an
    ALE id the preprocessing under `gymnasium.make_vec`."""
    wrappers: list[Wrapper] = [
        functools.partial(
            GymnasiumAtariPreprocessing,
            noop_max=settings.noop_max,
            frame_skip=settings.frame_skip,
            screen_size=settings.screen_size,
            terminal_on_life_loss=False,
            grayscale_obs=settings.grayscale,
            scale_obs=False,
        )
    ]
    # Above the frame skip and the no-op starts, as in DeepMind's setup: a
    # life is judged lost once per agent step, and a game that goes on after
    # one continues with one no-op agent step, without new no-op starts.
    if settings.episodic_life:
        wrappers.append(EpisodicLife)
    wrappers.append(functools.partial(FrameStackObservation, stack_size=settings.frame_stack))
    kwargs = {
        # The preprocessing repeats actions itself and max-pools the last two frames.
        "frameskip": 1,
        "repeat_action_probability": settings.repeat_action_probability,
        # The ALE counts every emulator frame since the game's reset, no-op
        # starts included, and reports the limit as a truncation; 0 is no limit.
        "max_num_frames_per_episode": settings.max_episode_frames,
    }
    if settings.grayscale:
        # The preprocessing reads the screen from the emulator itself; a grey
        # frame is cheaper than the RGB one ale-py would otherwise render on
        # every emulator frame, and sizes the preprocessing's grey buffers
        # the same.
        kwargs["obs_type"] = "grayscale"
    return wrappers, kwargs


def envpool_arguments(env_id: str, settings: AtariSettings) -> dict[str, Any]:
    """envpool's Atari options for the preprocessing."""
    if settings.noop_max == 0:
        # envpool draws its no-op count from 1..=noop_max and fails without one.
        raise InvalidRequest(f'env "{env_id}": envpool needs atari.noop_max of at least 1')
    if settings.max_episode_frames:
        # envpool counts agent steps; rounding up ends the episode in the same
        # agent step as the ALE's frame count would.
        max_episode_steps = math.ceil(settings.max_episode_frames / settings.frame_skip)
    else:
        max_episode_steps = ENVPOOL_NO_STEP_LIMIT
    return {
        "img_height": settings.screen_size,
        "img_width": settings.screen_size,
        "stack_num": settings.frame_stack,
        "gray_scale": settings.grayscale,
        "frame_skip": settings.frame_skip,
        "noop_max": settings.noop_max,
        "repeat_action_probability": settings.repeat_action_probability,
        "episodic_life": settings.episodic_life,
        "reward_clip": False,
        "max_episode_steps": max_episode_steps,
        "zero_discount_on_life_loss": False,
        "use_fire_reset": False,
    }


class EpisodicLife(gymnasium.Wrapper):
    """Ends the episode (terminated) when a life is lost, and continues the
    game on the reset that follows: that reset takes one no-op step instead
    of resetting the game, unless the game is over or was cut by its frame
    limit. Any other reset, and any seeded one, resets the game."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if meanings[NOOP] != "NOOP":
            raise ValueError(f"episodic life continues the game with action {NOOP}, which is {meanings[NOOP]}")
        self._lives = 0
        # The last step lost a life and the game goes on.
        self._life_lost = False

    def lives(self) -> int:
        return self.env.unwrapped.ale.lives()

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        lives = self.lives()
        # A step that also ends the game, or reaches its frame limit, is
        # reported as that: the next reset starts a new game.
        self._life_lost = 0 < lives < self._lives and not (terminated or truncated)
        self._lives = lives
        return observation, reward, terminated or self._life_lost, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self._life_lost and seed is None:
            self._life_lost = False
            observation, _, terminated, truncated, info = self.env.step(NOOP)
            if not (terminated or truncated):
                self._lives = self.lives()
                return observation, info
        self._life_lost = False
        observation, info = self.env.reset(seed=seed, options=options)
        self._lives = self.lives()
        return observation, info
