"""Sample Factory 2.1.1 APPO on Gymnasium's CartPole-v1, CPU only.

Runs Sample Factory's own Gym launcher (`python -m sf_examples.train_gym_env`)
with the CartPole-v1 command line its docstring gives (feed-forward, 20 envs
per rollout worker, 2 policy workers, batch 512, no V-trace, reward scale
0.1) and its CPU settings: --device=cpu and one rollout worker per core (its
default num_workers), envs split in two halves for double-buffered sampling
(its default worker_num_splits=2). --core lstm adds --use_rnn=True
--rnn_type=lstm (recurrence then defaults to the rollout, 32).

The runner logs, every 5 s, the env frames so far, the samples its learner
has trained on and the policy lag; the rates are read from those lines over
the window after the warm-up: env steps/s, learner updates/s (samples /
batch_size, one epoch of one batch each) and the mean of the periods' mean
policy lag. Before stopping it, the peak RSS (VmHWM) of each of its
processes. Extra arguments after `--` go to Sample Factory.

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

from peer_run import parse_with_passthrough, peak_rss_bytes

BATCH_SIZE = 512
LAUNCHER_ARGS = [
    "--env=CartPole-v1",
    "--algo=APPO",
    "--num_envs_per_worker=20",
    "--policy_workers_per_policy=2",
    "--with_vtrace=False",
    f"--batch_size={BATCH_SIZE}",
    "--reward_scale=0.1",
    "--save_every_sec=10",
    "--experiment_summaries_interval=10",
    "--device=cpu",
]
CORES = {
    "none": ["--use_rnn=False", "--recurrence=1"],
    "lstm": ["--use_rnn=True", "--rnn_type=lstm"],
}
REPORT = re.compile(r"Total num frames: (\d+)\..*Samples: (\d+)\. Policy #0 lag: \(min: [-\d.]+, avg: ([-\d.]+)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds measured after the warm-up")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the first report not measured")
    parser.add_argument("--core", choices=sorted(CORES), default="none")
    parser.add_argument("--json", action="store_true")
    return parse_with_passthrough(parser)


def main():
    args, passthrough = parse_args()
    import psutil

    train_dir = tempfile.mkdtemp(prefix="sf-cartpole-")
    command = [
        sys.executable,
        "-m",
        "sf_examples.train_gym_env",
        *LAUNCHER_ARGS,
        *CORES[args.core],
        f"--experiment=cartpole_{args.core}",
        f"--train_dir={train_dir}",
        *passthrough,
    ]
    runner = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    selector = selectors.DefaultSelector()
    selector.register(runner.stdout, selectors.EVENT_READ)
    reports = []  # (time, env frames, samples trained on, mean policy lag)
    tail = []
    deadline = None
    def measured():
        return sum(1 for r in reports if r[0] >= reports[0][0] + args.warmup)

    # A window needs two reports (one every 5 s): a short run goes on until it has them.
    while runner.poll() is None and (deadline is None or time.time() < deadline or measured() < 2):
        if not selector.select(timeout=0.5):
            continue
        line = runner.stdout.readline()
        tail = (tail + [line])[-20:]
        found = REPORT.search(line)
        if found:
            now = time.time()
            reports.append((now, int(found[1]), int(found[2]), float(found[3])))
            if deadline is None:
                deadline = now + args.warmup + args.seconds
    exited = runner.poll()
    processes = [psutil.Process(runner.pid), *psutil.Process(runner.pid).children(recursive=True)] if exited is None else []
    rss = {f"{p.pid} {' '.join(p.cmdline()[-1:])[:40]}": peak_rss_bytes(p.pid) for p in processes}
    try:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(train_dir, ignore_errors=True)
    if exited is not None:
        sys.exit(f"Sample Factory exited ({exited}) before the end:\n{''.join(tail)}")

    window = [r for r in reports if r[0] >= reports[0][0] + args.warmup]
    if len(window) < 2:
        sys.exit(f"fewer than two reports after the {args.warmup} s warm-up (one every 5 s): measure for longer")
    (t0, frames0, samples0, _), (t1, frames1, samples1, _) = window[0], window[-1]
    lags = [lag for _, _, _, lag in window[1:] if lag >= 0]
    result = {
        "peer": "sample-factory",
        "version": importlib.metadata.version("sample-factory"),
        "env": "CartPole-v1",
        "core": args.core,
        "num_workers": os.cpu_count(),
        "seconds": t1 - t0,
        "env_steps_per_second": (frames1 - frames0) / (t1 - t0),
        "learner_updates_per_second": (samples1 - samples0) / BATCH_SIZE / (t1 - t0),
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
