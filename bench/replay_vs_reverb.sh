#!/usr/bin/env bash
# fleet's replay service and DeepMind Reverb under the same loads, one after
# the other on this machine, each driven through its fast paths (pipelined
# inserts, streamed samples); prints each run's own table and then one
# side-by-side table of items/s and the server's peak RSS per load.
# Arguments go to both benchmarks in every load, after the load's own flags
# (--seconds S, --inserts-in-flight N, --batches-in-flight N, --closed-loop).
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
fleet_version="$(target/release/fleet --version | cut -d' ' -f2)"
reverb_version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("dm-reverb"))')"

# name|flags: the loads, each one row of the side-by-side table. Sampling
# loads start from a prefilled table so that samplers never wait for data.
loads=(
    "1 KiB inserts, 1 writer|--workload 1KiB --inserters 1 --samplers 0"
    "1 KiB inserts, 2 writers|--workload 1KiB --inserters 2 --samplers 0"
    "100 KiB inserts, 1 writer|--workload 100KiB --inserters 1 --samplers 0"
    "1 KiB samples, batch 32|--workload 1KiB --inserters 0 --samplers 1 --batch-size 32 --prefill 10000"
    "100 KiB samples, batch 32, 1 writer inserting|--workload 100KiB --inserters 1 --samplers 1 --batch-size 32 --prefill 2000"
    "mixed 1 KiB, 4 writers + 4 samplers, batch 16|--workload 1KiB --inserters 4 --samplers 4 --batch-size 16 --prefill 10000"
    "mixed 100 KiB, 4 writers + 4 samplers, batch 16|--workload 100KiB --inserters 4 --samplers 4 --batch-size 16 --prefill 2000"
    "mixed R2D2 80×84×84, 4 writers + 4 samplers, batch 16|--workload r2d2-80x84x84 --inserters 4 --samplers 4 --batch-size 16 --prefill 250"
)

# The data row of a benchmark's table: inserts/s, samples/s and peak RSS.
row_figures() {
    awk -F'|' '/^\| [^-w]/ { gsub(/ /, ""); print $4 "|" $5 "|" $10; exit }'
}

# Thousands separators for a whole number ("–" and the like pass through).
grouped() {
    sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"
}

reverb_log="$(mktemp)"
trap 'rm -f "$reverb_log"' EXIT
summary=()
for load in "${loads[@]}"; do
    name="${load%%|*}"
    read -r -a flags <<<"${load#*|}"
    echo "## $name: fleet $fleet_version"
    fleet_table="$("${fleet[@]}" "${flags[@]}" "$@")"
    echo "$fleet_table"
    echo
    echo "## $name: Reverb $reverb_version"
    # TensorFlow's start-up chatter stays in the log unless the run fails.
    reverb_table="$("${reverb[@]}" "${flags[@]}" "$@" 2>"$reverb_log")" || {
        tail -n 30 "$reverb_log" >&2
        exit 1
    }
    echo "$reverb_table"
    echo
    IFS='|' read -r fleet_inserts fleet_samples fleet_rss <<<"$(row_figures <<<"$fleet_table")"
    IFS='|' read -r reverb_inserts reverb_samples reverb_rss <<<"$(row_figures <<<"$reverb_table")"
    summary+=("| $name | $(grouped "$fleet_inserts") | $(grouped "$reverb_inserts") | $(grouped "$fleet_samples") | $(grouped "$reverb_samples") | $fleet_rss | $reverb_rss |")
done

echo "## fleet $fleet_version against Reverb $reverb_version"
echo "| load | fleet inserts/s | Reverb inserts/s | fleet samples/s | Reverb samples/s | fleet server peak RSS MiB | Reverb server peak RSS MiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${summary[@]}"
