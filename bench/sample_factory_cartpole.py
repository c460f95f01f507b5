"""Sample Factory 2.1.1 APPO, CPU only: env steps/s, learner updates/s,
policy lag and peak memory on Gymnasium's CartPole-v1 (--env cartpole, the
default) or on Atari Pong (--env pong), one JSON line with --json.

CartPole-v1 runs Sample Factory's own Gym launcher
(`python -m sf_examples.train_gym_env`) with the CartPole-v1 command line its
docstring gives (feed-forward, 20 envs per rollout worker, 2 policy workers,
batch 512, no V-trace, reward scale 0.1) and its CPU settings: --device=cpu
and one rollout worker per core (its default num_workers), envs split in two
halves for double-buffered sampling (its default worker_num_splits=2).

Pong runs its envpool Atari launcher
(`python -m sf_examples.envpool.atari.train_envpool_atari --env=atari_pong`,
envpool's Pong-v5; sf_examples/envpool/atari/envpool_atari_utils.py makes
it). The launcher's own defaults (envpool_atari_params.py) stand where they
are how it is meant to be driven fast: one envpool per rollout worker
(num_envs_per_worker=1, the vector size set by --env_agents; it warns
against more), hence no double buffering (worker_num_splits=1), batched
sampling, asynchronous learning, one policy worker, observations divided by
255 with no running normalisation. The rest is set to fleet's Pong setup
(config/atari.toml with config/default.toml's [env.atari]):
  - 2 rollout workers of 16 envs (fleet's 2 actors of 16; one worker per
    core is also Sample Factory's own default on a 2-core machine);
  - IMPALA's shallow CNN: --encoder_conv_architecture=convnet_impala (conv
    16 8x8/4, conv 32 4x4/2) with one fully connected layer of 256
    (sample_factory/model/encoder.py), ReLU, feed-forward;
  - the learner's work per sample: one pass, as fleet's (which learns
    from batches of 8 sequences of 20 steps), in batches of 640 samples
    (IMPALA's 32 x 20) from rollouts of 20 steps. The launcher's own schedule (4 epochs of 4 batches of 256 over
    128-step rollouts) trains on every sample four times; it is restored
    with `-- --rollout=128 --batch_size=256 --num_batches_per_epoch=4
    --num_epochs=4`.
The launcher passes frame_skip=4, reward_clip and episodic_life to
envpool.make and leaves the rest at envpool's Pong-v5 defaults: 84x84 grey,
4 frames stacked, max over the last two frames of each skip, noop_max=30,
27,000 agent steps (108,000 frames) per episode, the minimal 6-action set.
Differences from fleet's Pong, none of which the launcher lets a flag
change:
  - no sticky actions: envpool's repeat_action_probability stays 0.0
    (fleet: 0.25, the ALE v5 default);
  - episodic_life=True: a lost life ends the episode. Pong has no lives
    (ALE reports 0), so nothing ends early;
  - FIRE pressed on reset (envpool's use_fire_reset=True): a reset runs
    0..=29 no-op frames, then one FIRE frame (fleet: 1..=30 no-ops);
  - rewards clipped to their sign in the env (fleet clips to [-1, 1] on the
    learner; Pong's rewards are +-1 either way);
  - envpool steps each worker's 16 envs on its own thread pool, one thread
    per core by default, synchronously with the worker's process; fleet
    serves them through its env bridge, two server processes per actor;
  - advantages from GAE (lambda 0.95), as the launcher has it, not V-trace
    (fleet): --with_vtrace=True stops 2.1.1's learner at its first
    summary, which reads GAE's advantages (fixed after that release);
  - Sample Factory's learning rate, entropy and clipping settings are the
    launcher's (they do not change the work per sample), and its learner
    trains from shared memory in the runner's process tree, not from a
    replay service;
  - each rollout worker is pinned to a core (Sample Factory's default
    --set_workers_cpu_affinity), and its envpool threads with it;
  - envpool 1.0.1 (see the .sh for why), fleet's is served by 1.2.5.

The runner logs, every 5 s, "Total num frames" (the samples its learner has
trained on, times env_frameskip since the launchers keep
summaries_use_frameskip=True: emulator frames for Pong, agent steps for
CartPole, frameskip 1), "Samples" (the observations its policy workers have
acted on, reported to it every 3 s) and the policy lag. The rates come from
those lines over the window after the warm-up: env_steps_per_second (agent
steps, each 4 emulator frames on Pong) and env_frames_per_second from the
learner's count, as Sample Factory's own FPS is; learner_updates_per_second
as optimiser steps (trained samples x num_epochs / batch_size);
sampled_steps_per_second from the policy workers' count, coarser, as a
check; and the mean of the periods' mean policy lag. Before stopping it, the
peak RSS (VmHWM) of each of its processes. The settings used are read back
from the config.json the runner writes. Extra arguments after `--` go to
Sample Factory and override the ones above. --core lstm swaps the
feed-forward core for an LSTM (--use_rnn=True --rnn_type=lstm; recurrence
then defaults to the rollout: 32 on CartPole, 20 on Pong).

Run through bench/sample_factory_cartpole.sh, which installs it into a venv.
"""

import argparse
import importlib.metadata
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from peer_run import parse_with_passthrough, peak_rss_bytes


@dataclass(frozen=True)
class Setup:
    """One environment's launcher and command line."""

    label: str
    launcher: str
    args: tuple


SETUPS = {
    "cartpole": Setup(
        label="CartPole-v1",
        launcher="sf_examples.train_gym_env",
        args=(
            "--env=CartPole-v1",
            "--algo=APPO",
            "--num_envs_per_worker=20",
            "--policy_workers_per_policy=2",
            "--with_vtrace=False",
            "--batch_size=512",
            "--reward_scale=0.1",
            "--save_every_sec=10",
            "--experiment_summaries_interval=10",
            "--device=cpu",
        ),
    ),
    "pong": Setup(
        label="envpool Pong-v5",
        launcher="sf_examples.envpool.atari.train_envpool_atari",
        args=(
            "--env=atari_pong",
            "--algo=APPO",
            "--device=cpu",
            "--num_workers=2",
            "--num_envs_per_worker=1",
            "--env_agents=16",
            "--worker_num_splits=1",
            "--batched_sampling=True",
            "--async_rl=True",
            "--encoder_conv_architecture=convnet_impala",
            "--encoder_conv_mlp_layers=256",
            "--with_vtrace=False",
            "--rollout=20",
            "--batch_size=640",
            "--num_batches_per_epoch=1",
            "--num_epochs=1",
            "--train_for_env_steps=10000000000",
        ),
    ),
}
CORES = {
    "none": ("--use_rnn=False", "--recurrence=1"),
    "lstm": ("--use_rnn=True", "--rnn_type=lstm"),
}
REPORT = re.compile(r"Total num frames: (\d+)\..*Samples: (\d+)\. Policy #0 lag: \(min: [-\d.]+, avg: ([-\d.]+)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(SETUPS), default="cartpole")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds measured after the warm-up")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the first report not measured")
    parser.add_argument("--core", choices=sorted(CORES), default="none")
    parser.add_argument("--startup", type=float, default=300.0, help="seconds to wait for the first report")
    parser.add_argument("--json", action="store_true")
    return parse_with_passthrough(parser)


def read_config(train_dir, experiment):
    """The settings the runner resolved, from the config.json it writes; None until it has."""
    try:
        with open(os.path.join(train_dir, experiment, "config.json")) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def follow(runner, args, train_dir, experiment):
    """Reads the runner's log until the window after the warm-up has two
    reports (one every 5 s), the runner exits, a process of it raises, or
    no report comes within --startup seconds. Returns the reports (time,
    learner frames, samples acted on, mean policy lag), the last lines, why
    it failed (None if it did not) and the runner's config."""
    selector = selectors.DefaultSelector()
    selector.register(runner.stdout, selectors.EVENT_READ)
    reports, tail = [], []
    started, deadline, config, failure, raised_at = time.time(), None, None, None, None

    def measured():
        return sum(1 for r in reports if r[0] >= reports[0][0] + args.warmup)

    while runner.poll() is None and (deadline is None or time.time() < deadline or measured() < 2):
        now = time.time()
        if raised_at is not None and now > raised_at + 3:
            break
        if deadline is None and failure is None and now > started + args.startup:
            failure = f"no report within {args.startup} s of the start"
            break
        if not selector.select(timeout=0.5):
            continue
        line = runner.stdout.readline()
        tail = (tail + [line])[-40:]
        # A process that raises leaves the others waiting on it: read its traceback, then stop.
        if raised_at is None and "Traceback (most recent call last)" in line:
            failure, raised_at = "a Sample Factory process raised", now
        found = REPORT.search(line)
        if found:
            reports.append((now, int(found[1]), int(found[2]), float(found[3])))
            if deadline is None:
                deadline = now + args.warmup + args.seconds
                config = read_config(train_dir, experiment)
    return reports, tail, failure, config


def stop(runner):
    """SIGTERM to the runner's session, SIGKILL if it is not gone within 30 s."""
    try:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main():
    args, passthrough = parse_args()
    import psutil

    setup = SETUPS[args.env]
    experiment = f"{args.env}_{args.core}"
    train_dir = tempfile.mkdtemp(prefix=f"sf-{args.env}-")
    command = [
        sys.executable,
        "-m",
        setup.launcher,
        *setup.args,
        *CORES[args.core],
        f"--experiment={experiment}",
        f"--train_dir={train_dir}",
        *passthrough,
    ]
    runner = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    # The runner has a session of its own: stop all of it however this script ends.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    try:
        reports, tail, failure, config = follow(runner, args, train_dir, experiment)
        exited = runner.poll()
        processes = []
        if exited is None:
            processes = [psutil.Process(runner.pid), *psutil.Process(runner.pid).children(recursive=True)]
        rss = {f"{p.pid} {' '.join(p.cmdline()[-1:])[:40]}": peak_rss_bytes(p.pid) for p in processes}
    finally:
        stop(runner)
        shutil.rmtree(train_dir, ignore_errors=True)
    if failure is None and exited is not None:
        failure = f"Sample Factory exited ({exited}) before the end"
    if failure is not None:
        sys.exit(f"{failure}:\n{''.join(tail)}")
    if config is None:
        sys.exit(f"no config.json under {train_dir}/{experiment} once the runner reported")

    window = [r for r in reports if r[0] >= reports[0][0] + args.warmup]
    if len(window) < 2:
        sys.exit(f"fewer than two reports after the {args.warmup} s warm-up (one every 5 s): measure for longer")
    (t0, frames0, sampled0, _), (t1, frames1, sampled1, _) = window[0], window[-1]
    seconds = t1 - t0
    frameskip = config["env_frameskip"]
    # The learner's count is in frames when summaries_use_frameskip is set, else in agent steps.
    trained_steps = (frames1 - frames0) / (frameskip if config["summaries_use_frameskip"] else 1)
    lags = [lag for _, _, _, lag in window[1:] if lag >= 0]
    result = {
        "peer": "sample-factory",
        "version": importlib.metadata.version("sample-factory"),
        "env": setup.label,
        "core": args.core,
        "num_workers": config["num_workers"],
        "envs_per_worker": config["num_envs_per_worker"] * config.get("env_agents", 1),
        "frameskip": frameskip,
        "seconds": seconds,
        "env_steps_per_second": trained_steps / seconds,
        "env_frames_per_second": trained_steps * frameskip / seconds,
        "learner_updates_per_second": trained_steps * config["num_epochs"] / config["batch_size"] / seconds,
        "sampled_steps_per_second": (sampled1 - sampled0) / seconds,
        "policy_lag": sum(lags) / len(lags) if lags else None,
        "peak_rss_bytes": rss,
        "command": " ".join(command[1:]),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
