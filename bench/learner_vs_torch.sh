#!/usr/bin/env bash
# fleet's learner and the same IMPALA updates in PyTorch (CPU), one after the
# other in one run on this machine, with the same duration and thread count:
# updates/s and frames/s for the CartPole MLP, the shallow CNN on 84x84x4
# frames, the shallow CNN with an LSTM core and burn-in, and IMPALA's deep
# ResNet torso and DQN's network on the same frames, as one table with
# the fleet/PyTorch ratio of updates/s. With --rounds N both sides run N
# times, alternating, and the table gives each column's median over the
# rounds, with the range of updates/s: on a shared virtual machine one run
# of either side can be off by a third.
#
#   bash bench/learner_vs_torch.sh --seconds 10 --threads 2 --rounds 3
#
# PyTorch 2.15.0 goes into a venv on Python 3.11 (TORCH_VENV, default
# target/torch-venv). PyPI's Linux torch wheel is a CUDA build: its libraries
# link the CUDA runtime, cuBLAS, cuDNN, NCCL and the rest, so it does not
# import without the nvidia wheels it depends on and is installed with them
# (about 5 GiB); only the CPU is used. FLEET names the fleet binary (default
# target/release/fleet, built here when FLEET is unset). Nothing else should
# run on the machine meanwhile: PyTorch's OpenMP threads collapse under
# contention.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
threads=2
rounds=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds S] [--threads N] [--rounds R]" >&2; exit 2 ;;
    esac
done

venv="${TORCH_VENV:-target/torch-venv}"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    python3.11 -m venv "$venv"
    "$venv/bin/pip" install --quiet "torch==2.15.0" "numpy"
fi
if [[ -z ${FLEET:-} ]]; then
    cargo build --release --locked --bin fleet || echo "note: building fleet failed; only PyTorch runs" >&2
fi
fleet="${FLEET:-target/release/fleet}"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fleet_version="missing"
if [[ -x $fleet ]]; then
    fleet_version="$("$fleet" --version | cut -d' ' -f2)"
else
    echo "note: no fleet binary at $fleet; the fleet columns stay empty" >&2
fi
torch_version="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
touch "$out/fleet" "$out/torch"
for ((round = 1; round <= rounds; round++)); do
    if [[ -x $fleet ]]; then
        echo "## round $round/$rounds: fleet $fleet_version, $threads threads" >&2
        if ! RAYON_NUM_THREADS="$threads" "$fleet" bench learner --seconds "$seconds" --json >>"$out/fleet" 2>"$out/fleet.err"; then
            echo "note: '$fleet bench learner' failed; its columns miss this round:" >&2
            tail -n 3 "$out/fleet.err" >&2
        fi
    fi
    echo "## round $round/$rounds: PyTorch $torch_version, $threads threads" >&2
    OMP_NUM_THREADS="$threads" "$venv/bin/python" bench/learner_torch.py \
        --seconds "$seconds" --threads "$threads" --reference --json >>"$out/torch"
done

"$venv/bin/python" - "$out/fleet" "$out/torch" "$fleet_version" "$torch_version" "$threads" "$seconds" "$rounds" <<'EOF'
import json
import statistics
import sys

fleet_path, torch_path, fleet_version, torch_version, threads, seconds, rounds = sys.argv[1:]
KEYS = ("updates_per_s", "frames_per_s", "ms_per_update_p50")


def rows(path):
    """Each workload's median over the rounds, and its updates/s range."""
    runs = {}
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                runs.setdefault(row["workload"], []).append(row)
    found = {}
    for name, group in runs.items():
        row = {key: statistics.median(r[key] for r in group) for key in KEYS}
        row["range"] = (min(r["updates_per_s"] for r in group), max(r["updates_per_s"] for r in group))
        found[name] = row
    return found


fleet, torch = rows(fleet_path), rows(torch_path)
names = list(dict.fromkeys([*fleet, *torch]))


def cell(row, key, digits):
    return f"{row[key]:.{digits}f}" if row else "–"


print(
    f"fleet {fleet_version} vs PyTorch {torch_version}, {threads} threads, {seconds} s per workload, "
    f"batch 32 x unroll 20, median of {rounds} round(s)"
)
print()
print(
    "| workload | fleet updates/s | PyTorch updates/s | fleet/PyTorch | fleet frames/s | PyTorch frames/s "
    "| fleet ms/update p50 | PyTorch ms/update p50 |"
)
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name in names:
    f, t = fleet.get(name), torch.get(name)
    ratio = f"{f['updates_per_s'] / t['updates_per_s']:.2f}" if f and t else "–"
    print(
        f"| {name} | {cell(f, 'updates_per_s', 2)} | {cell(t, 'updates_per_s', 2)} | {ratio} "
        f"| {cell(f, 'frames_per_s', 0)} | {cell(t, 'frames_per_s', 0)} "
        f"| {cell(f, 'ms_per_update_p50', 1)} | {cell(t, 'ms_per_update_p50', 1)} |"
    )
if int(rounds) > 1:
    print()
    print("updates/s range over the rounds (min-max):")
    for name in names:
        for side, found in (("fleet", fleet), ("PyTorch", torch)):
            if name in found:
                low, high = found[name]["range"]
                print(f"- {name}, {side}: {low:.2f}-{high:.2f}")
if "shallow_cnn_nn_lstm" in torch:
    print()
    print("shallow_cnn_nn_lstm: PyTorch's fused nn.LSTM without resets at episode starts, for reference only.")
EOF
