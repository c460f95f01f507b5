#!/usr/bin/env bash
# fleet, PufferLib 3.0 and Sample Factory 2.1.1 training on CartPole, one
# after the other in one run on this machine, each for the same measured
# time after the same warm-up: env steps/s, learner updates/s, policy lag and
# the summed peak RSS of each system's processes, as one table, then each
# system's own rows. fleet runs `fleet bench e2e` (1, 2 and 4 actors, each
# feed-forward and LSTM), PufferLib its native C CartPole through its own
# trainer (bench/pufferlib_cartpole.sh), Sample Factory APPO on Gymnasium's
# CartPole-v1 through its Gym launcher (bench/sample_factory_cartpole.sh).
# With --time-to-target, fleet's default run is also timed to its target
# return (475) and PufferLib's default (LSTM) config to mean episode length
# 195, as its CartPole stops episodes at 200 steps.
#
#   bash bench/e2e_vs_peers.sh --seconds 30 --warmup 10 [--actors 1,2,4] [--time-to-target 600]
#
# FLEET names the fleet binary (default target/release/fleet, built here when
# FLEET is unset). PUFFERLIB_FLAGS and SAMPLE_FACTORY_FLAGS, if set, are
# extra flags for the peers' own config parsers (e.g. PUFFERLIB_FLAGS="--env.num-envs
# 256" for a quick try: the shipped config's first epoch is 524,288 steps).
# The peers' venvs are built on first use (see their scripts). Nothing else
# should run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
warmup=10
actors=1,2,4
time_to_target=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --actors) actors=$2; shift 2 ;;
        --time-to-target) time_to_target=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds S] [--warmup S] [--actors 1,2,4] [--time-to-target LIMIT_S]" >&2; exit 2 ;;
    esac
done

if [[ -z ${FLEET:-} ]]; then
    cargo build --release --locked --bin fleet
fi
fleet="${FLEET:-target/release/fleet}"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
started=$(date +%s)

echo "## fleet $("$fleet" --version | cut -d' ' -f2): fleet bench e2e" >&2
fleet_args=(bench e2e --seconds "$seconds" --warmup "$warmup" --actors "$actors" --json)
[[ -n $time_to_target ]] && fleet_args+=(--time-to-target "$time_to_target")
"$fleet" "${fleet_args[@]}" | tee "$out/fleet" >&2

puffer_args=(--seconds "$seconds" --warmup "$warmup")
[[ -n $time_to_target ]] && puffer_args+=(--until-length 195 --limit "$time_to_target")
read -r -a puffer_flags <<<"${PUFFERLIB_FLAGS:-}"
bash bench/pufferlib_cartpole.sh "${puffer_args[@]}" -- "${puffer_flags[@]}" | tee "$out/pufferlib" >&2 ||
    echo "note: the PufferLib run failed; its rows are missing" >&2

read -r -a sample_factory_flags <<<"${SAMPLE_FACTORY_FLAGS:-}"
bash bench/sample_factory_cartpole.sh --seconds "$seconds" --warmup "$warmup" -- "${sample_factory_flags[@]}" | tee "$out/sample-factory" >&2 ||
    echo "note: the Sample Factory run failed; its rows are missing" >&2

python3 - "$out" "$seconds" "$warmup" "$(nproc)" "$(($(date +%s) - started))" <<'EOF'
import json
import sys
from pathlib import Path

out, seconds, warmup, cores, took = sys.argv[1:]


def lines(name):
    path = Path(out) / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def total_mib(rss):
    """Sum of every process's peak RSS, in MiB (shared pages count in each)."""
    values = []
    for value in rss.values() if isinstance(rss, dict) else rss:
        if isinstance(value, (list, dict)):
            values.append(total_mib(value) * 2**20)
        elif value is not None:
            values.append(value)
    return sum(values) / 2**20


def cell(value, digits):
    return "–" if value is None else f"{value:.{digits}f}"


print(f"CartPole, {seconds} s measured after {warmup} s of warm-up per row, {cores} cores, {took} s in all")
print()
print("| system | core | processes | env steps/s | learner updates/s | policy lag | peak RSS MiB (sum) |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
timed = []
for row in lines("fleet"):
    if "target_return" in row:
        timed.append(row)
        continue
    print(
        f"| fleet | {row['core']} | {row['actors']} actor{'s' if row['actors'] > 1 else ''}, {row['num_envs_per_actor']} envs each "
        f"| {row['env_steps_per_second']:.0f} | {row['learner_updates_per_second']:.1f} | {cell(row['policy_lag'], 2)} "
        f"| {total_mib(row['peak_rss_bytes']):.0f} |"
    )
for row in lines("pufferlib"):
    if "target_episode_length" in row:
        timed.append(row)
        continue
    print(
        f"| PufferLib {row['version']} | {row['core']} | {len(row['peak_rss_bytes']['workers'])} workers, "
        f"{row['agents']} envs | {row['env_steps_per_second']:.0f} | {row['optimiser_steps_per_second']:.1f} | – "
        f"| {total_mib(row['peak_rss_bytes']):.0f} |"
    )
for row in lines("sample-factory"):
    print(
        f"| Sample Factory {row['version']} | {row['core']} | {row['num_workers']} rollout workers "
        f"| {row['env_steps_per_second']:.0f} | {row['learner_updates_per_second']:.1f} | {cell(row['policy_lag'], 2)} "
        f"| {total_mib(row['peak_rss_bytes']):.0f} |"
    )
print()
print("learner updates/s: fleet's learner steps on a batch; PufferLib's optimiser steps (minibatches);")
print("Sample Factory's trained samples / batch size 512. Policy lag in weight versions.")
for row in timed:
    if "target_return" in row:
        reached = f"{row['wall_seconds']:.0f} s, {row['env_steps']} env steps" if row["wall_seconds"] is not None else f"not in {row['run_seconds']:.0f} s"
        print(f"time to return {row['target_return']:.0f} (fleet, {row['core']}, {row['actors']} actors): {reached}")
    else:
        reached = f"{row['wall_seconds']:.0f} s, {row['env_steps']} env steps" if row["wall_seconds"] is not None else f"not in {row['run_seconds']:.0f} s"
        print(f"time to mean episode length {row['target_episode_length']:.0f} (PufferLib, {row['core']}): {reached}")
EOF
