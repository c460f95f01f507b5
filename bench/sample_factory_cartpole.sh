#!/usr/bin/env bash
# Sample Factory 2.1.1 APPO on Gymnasium's CartPole-v1, CPU only: env steps/s,
# learner updates/s and policy lag for each core (feed-forward, LSTM), one
# JSON line each (see bench/sample_factory_cartpole.py for the settings).
#
#   bash bench/sample_factory_cartpole.sh --seconds 30 --warmup 10 [--cores none,lstm] [-- SAMPLE FACTORY FLAGS]
#
# Sample Factory goes into a venv on Python 3.11 (SF_VENV, default
# target/sample-factory-venv) with PyTorch 2.15.0, whose PyPI wheel brings
# the CUDA libraries (about 5 GiB) though only the CPU is used.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
warmup=10
cores=none,lstm
passthrough=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --cores) cores=$2; shift 2 ;;
        --) shift; passthrough=("$@"); break ;;
        *) echo "usage: $0 [--seconds S] [--warmup S] [--cores none,lstm] [-- FLAGS]" >&2; exit 2 ;;
    esac
done

venv="${SF_VENV:-target/sample-factory-venv}"
[[ -x $venv/bin/python ]] || python3.11 -m venv "$venv"
python="$venv/bin/python"
if ! "$python" -c 'import sample_factory, sf_examples.train_gym_env, psutil' 2>/dev/null; then
    "$python" -m pip install --quiet "torch==2.15.0" "sample-factory==2.1.1" psutil
fi

IFS=, read -r -a core_list <<<"$cores"
for core in "${core_list[@]}"; do
    echo "## Sample Factory 2.1.1 APPO CartPole-v1, core $core, $seconds s after $warmup s" >&2
    "$python" bench/sample_factory_cartpole.py --seconds "$seconds" --warmup "$warmup" --core "$core" --json -- "${passthrough[@]}"
done
