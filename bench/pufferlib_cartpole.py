"""PufferLib 3.0 training on its native C CartPole (puffer_cartpole), CPU only.

Driven as `puffer train puffer_cartpole` drives it: the config PufferLib
ships for the env (its default.ini under cartpole.ini: the Multiprocessing
vector backend, 2 vector envs of 4096 C envs each, PPO with its Muon
optimiser, batch = agents x bptt_horizon 64, minibatch 32768) read by
pufferl.load_config, the env and policy built by pufferl.load_env and
load_policy, and PuffeRL's evaluate/train loop, with the device set to cpu.
The cartpole config wraps the policy in its LSTM (`Recurrent`); --core none
drops that wrapper, as a config without rnn_name would. Extra arguments after
`--` go to PufferLib's own config parser (e.g. `-- --env.num-envs 512`).

Prints env steps/s (PuffeRL's global_step, one step per env per vector step)
and optimiser steps/s over the window after the warm-up, and the peak RSS
(VmHWM) of this process and of each vector worker. With --until-length L it
instead trains until the mean episode length of a logging period reaches L
and prints the wall seconds from the start (env and policy creation
included), or null after --limit seconds. Its CartPole ends episodes at 200
steps (CartPole-v0's limit), so 475 cannot be reached there; 195 is v0's
solved threshold.

Run through bench/pufferlib_cartpole.sh, which builds PufferLib into a venv.
Set OMP_NUM_THREADS=1: the vector workers busy-wait.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from peer_run import parse_with_passthrough, peak_rss_bytes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds measured after the warm-up")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the first update not measured")
    parser.add_argument("--core", choices=("none", "lstm"), default="lstm")
    parser.add_argument("--until-length", type=float, default=None, help="train until this mean episode length")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds --until-length may take")
    parser.add_argument("--json", action="store_true")
    return parse_with_passthrough(parser)


def main():
    args, passthrough = parse_args()
    started = time.time()
    # PufferLib's parser reads sys.argv; the device is forced to the CPU.
    sys.argv = ["puffer", "--train.device", "cpu", *passthrough]
    # Importing pufferlib links its resources into the working directory.
    os.chdir(tempfile.mkdtemp(prefix="pufferlib-cartpole-"))
    import psutil
    from pufferlib import pufferl

    env_name = "puffer_cartpole"
    config = pufferl.load_config(env_name)
    if args.core == "none":
        config["rnn_name"] = None
        config["train"]["use_rnn"] = False
    if args.until_length is None:
        # Keeps the run from ending on its step budget while measured.
        config["train"]["total_timesteps"] = 10**13
    # The dashboard redraws the terminal at every log; this script prints its own lines.
    pufferl.PuffeRL.print_dashboard = lambda self, *a, **k: None

    vecenv = pufferl.load_env(env_name, config)
    policy = pufferl.load_policy(config, vecenv)
    train_config = dict(**config["train"], env=env_name)
    trainer = pufferl.PuffeRL(train_config, vecenv, policy)
    optimiser_steps_per_epoch = trainer.total_minibatches // trainer.accumulate_minibatches

    samples = []  # (time, env steps, epochs) after each epoch
    reached = None
    deadline = None
    while True:
        trainer.evaluate()
        logs = trainer.train()
        now = time.time()
        samples.append((now, trainer.global_step, trainer.epoch))
        if deadline is None:
            deadline = now + args.warmup + args.seconds
        if args.until_length is not None:
            length = logs.get("environment/episode_length") if logs is not None else None
            if length is not None and length >= args.until_length:
                reached = (now - started, trainer.global_step, float(length))
                break
            if now >= started + args.limit:
                break
        # A window needs two epochs: a long epoch can stretch the run past its time.
        elif now >= deadline and sum(1 for s in samples if s[0] >= samples[0][0] + args.warmup) >= 2:
            break

    workers = psutil.Process().children(recursive=True)
    rss = {"main": peak_rss_bytes(os.getpid()), "workers": [peak_rss_bytes(w.pid) for w in workers]}
    trainer.vecenv.close()
    trainer.utilization.stop()

    common = {
        "peer": "pufferlib",
        "version": __import__("pufferlib").__version__,
        "env": env_name,
        "core": args.core,
        "vec_backend": config["vec"]["backend"],
        "vec_envs": config["vec"]["num_envs"],
        "envs_per_vec_env": config["env"]["num_envs"],
        "agents": trainer.total_agents,
        "batch_size": train_config["batch_size"],
        "minibatch_size": train_config["minibatch_size"],
        "torch_threads": __import__("torch").get_num_threads(),
        "peak_rss_bytes": rss,
    }
    if args.until_length is not None:
        result = {
            **common,
            "target_episode_length": args.until_length,
            "wall_seconds": reached[0] if reached else None,
            "env_steps": reached[1] if reached else None,
            "run_seconds": time.time() - started,
        }
    else:
        first_time = samples[0][0]
        window = [s for s in samples if s[0] >= first_time + args.warmup]
        (t0, steps0, epochs0), (t1, steps1, epochs1) = window[0], window[-1]
        result = {
            **common,
            "seconds": t1 - t0,
            "env_steps_per_second": (steps1 - steps0) / (t1 - t0),
            "optimiser_steps_per_second": (epochs1 - epochs0) * optimiser_steps_per_epoch / (t1 - t0),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    # PufferLib's workers and threads outlive a normal return.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
