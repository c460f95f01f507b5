#!/usr/bin/env bash
# Sample Factory 2.1.1 APPO, CPU only, on Gymnasium's CartPole-v1 (--env
# cartpole, the default) or on envpool's Atari Pong (--env pong): env
# steps/s, learner updates/s and policy lag for each core (feed-forward,
# LSTM), one JSON line each (see bench/sample_factory_cartpole.py for the
# settings and how they differ from fleet's Pong).
#
#   bash bench/sample_factory_cartpole.sh --seconds 30 --warmup 10 [--cores none,lstm] [-- SAMPLE FACTORY FLAGS]
#   bash bench/sample_factory_cartpole.sh --env pong --seconds 60 --warmup 20 [--cores none] [-- FLAGS]
#
# Sample Factory goes into a venv on Python 3.11 (SF_VENV, default
# target/sample-factory-venv) with PyTorch 2.15.0, whose PyPI wheel brings
# the CUDA libraries (about 5 GiB) though only the CPU is used. Pong adds
# envpool 1.0.1 (its wheel carries the Atari ROMs), the newest release whose
# env_type="gym" pool, the one Sample Factory's launcher asks for, is an
# OpenAI Gym env: later ones make it a Gymnasium vector env, which fails on
# close under the gymnasium<1.0 that Sample Factory 2.1.1 requires. It
# brings OpenAI Gym 0.26, whose spaces Sample Factory converts with Shimmy
# (1.x, the last for gymnasium<1.0).
set -euo pipefail
cd "$(dirname "$0")/.."

env=cartpole
seconds=30
warmup=10
cores=
passthrough=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --env) env=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --cores) cores=$2; shift 2 ;;
        --) shift; passthrough=("$@"); break ;;
        *) echo "usage: $0 [--env cartpole|pong] [--seconds S] [--warmup S] [--cores none,lstm] [-- FLAGS]" >&2; exit 2 ;;
    esac
done
# What each env needs beyond Sample Factory (to install, and to check that
# it is there), its label, and the cores it runs unless --cores says
# otherwise (fleet's Pong setup is feed-forward).
check="import sample_factory, sf_examples.train_gym_env, psutil"
case $env in
    cartpole) extra=(); label=CartPole-v1; cores=${cores:-none,lstm} ;;
    pong)
        extra=("envpool==1.0.1" "shimmy>=0.2.1,<2")
        check+="; import shimmy, importlib.metadata; assert importlib.metadata.version('envpool') == '1.0.1'"
        label="envpool Pong-v5"; cores=${cores:-none} ;;
    *) echo "$0: --env is cartpole or pong, not $env" >&2; exit 2 ;;
esac

venv="${SF_VENV:-target/sample-factory-venv}"
[[ -x $venv/bin/python ]] || python3.11 -m venv "$venv"
python="$venv/bin/python"
if ! "$python" -c "$check" 2>/dev/null; then
    "$python" -m pip install --quiet "torch==2.15.0" "sample-factory==2.1.1" psutil "${extra[@]}"
fi

IFS=, read -r -a core_list <<<"$cores"
for core in "${core_list[@]}"; do
    echo "## Sample Factory 2.1.1 APPO $label, core $core, $seconds s after $warmup s" >&2
    "$python" bench/sample_factory_cartpole.py --env "$env" --seconds "$seconds" --warmup "$warmup" --core "$core" --json -- "${passthrough[@]}"
done
