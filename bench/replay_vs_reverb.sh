#!/usr/bin/env bash
# fleet's replay service and DeepMind Reverb under the same load, one after
# the other in one run on this machine. Arguments go to both benchmarks
# (--inserters K --samplers M --batch-size B --seconds S --workload NAME).
#
#   bash bench/replay_vs_reverb.sh --seconds 10
#
# Reverb 0.14.0 with TensorFlow 2.15 (CPU) goes into a venv on Python 3.11
# (REVERB_VENV, default target/reverb-venv); both servers bind 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${REVERB_VENV:-target/reverb-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3.11 -m venv "$venv"
    "$venv/bin/pip" install --quiet "dm-reverb==0.14.0" "tensorflow-cpu==2.15.1" "numpy<2"
fi
cargo build --release --locked --bin fleet

fleet=(target/release/fleet bench replay)
reverb=("$venv/bin/python" bench/reverb_replay.py)
version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("dm-reverb"))')"
for load in mixed inserts-only; do
    extra=()
    if [[ $load == inserts-only ]]; then extra=(--samplers 0); fi
    echo "## fleet $(target/release/fleet --version | cut -d' ' -f2), $load"
    "${fleet[@]}" "$@" "${extra[@]}"
    echo
    echo "## Reverb $version, $load"
    "${reverb[@]}" "$@" "${extra[@]}" 2>/dev/null
    echo
done
