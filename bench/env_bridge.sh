#!/usr/bin/env bash
# The env bridge's overhead: each environment vector stepped with random
# actions through the bridge (`fleet bench env`: Rust actor side, gRPC, the
# Python server) and in Python alone (bench/env_direct.py), one after the
# other in the same run. Prints a Markdown table; a negative overhead means
# the bridge's streams (server processes stepping side by side) outran the
# one Python process alone.
#
#   bench/env_bridge.sh PYTHON [SECONDS] [NUM_ENVS] [ROW...]
#
# A ROW is "ENV ATARI BACKEND STREAMS ALONE" (the default rows are below):
# the env name, the Atari preprocessing (yes/no), the backend that serves
# it, the bridge streams (each a server process of its own), and what runs
# alone: `bridge`, the bridge's own EnvVector without gRPC (same backend,
# wrappers and preprocessing), or `gymnasium`, Gymnasium's own vector
# (gymnasium.make_vec, its default vectorization).
#
# PYTHON has fleet-envbridge installed with its atari, envpool and mujoco
# extras.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${1:?usage: $0 PYTHON [SECONDS] [NUM_ENVS] [ROW...]}"
seconds="${2:-20}"
num_envs="${3:-16}"
rows=("${@:4}")
if [[ ${#rows[@]} -eq 0 ]]; then
    rows=("gym:ALE/Pong-v5 yes gymnasium 1 bridge" "gym:ALE/Pong-v5 yes gymnasium 2 bridge"
        "envpool:Pong-v5 yes envpool 1 bridge" "CartPole-v1 no gymnasium 1 bridge"
        "MinAtar/Breakout-v1 no gymnasium 1 bridge" "HalfCheetah-v5 no gymnasium 1 gymnasium"
        "envpool:HalfCheetah-v5 no envpool 1 bridge")
fi
# FLEET names the fleet binary (default target/release/fleet, built here
# when FLEET is unset).
if [[ -z ${FLEET:-} ]]; then
    cargo build --release --quiet --bin fleet
fi
fleet="$(realpath "${FLEET:-target/release/fleet}")"
bridge="env.bridge_command=[\"$python\", \"-m\", \"fleet_envbridge.cli\", \"--log-level\", \"WARNING\"]"

# Bare Gymnasium ids are served by a bridge server of this script's own,
# given to fleet as env.remote: as `gym:<id>` an actor's own server would
# hand the id to envpool wherever envpool lists it (CartPole-v1,
# HalfCheetah-v5, ...). It stops when this script's end closes its stdin.
coproc server { exec "$python" -m fleet_envbridge.cli --listen 127.0.0.1:0 --exit-with-stdin --log-level WARNING; }
server_pid=$server_PID
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
read -r line <&"${server[0]}"
remote="${line#listening on }"

rate() { sed -E 's/.*"steps_per_second": ?([0-9.]+).*/\1/'; }

echo "| env | backend | num_envs | bridge streams | alone | alone: agent steps/s | bridge: agent steps/s | bridge: env frames/s | bridge / alone | overhead |"
echo "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
for row in "${rows[@]}"; do
    read -r env atari backend streams alone_mode <<<"$row"
    direct_flags=(--env "$env" --num-envs "$num_envs" --seconds "$seconds")
    fleet_flags=(--set "env.name=$env" --set "env.remote=" --set "$bridge" --set "actor.num_envs=$num_envs"
        --set "env.bridge_streams=$streams")
    frame_skip=1
    if [[ "$atari" == yes ]]; then
        direct_flags+=(--atari)
        fleet_flags+=(--set env.preprocess=atari)
        frame_skip=4
    fi
    if [[ "$alone_mode" == gymnasium ]]; then
        direct_flags+=(--gymnasium)
    fi
    if [[ "$env" != *:* ]]; then
        # A bare id goes to the bridge only with an address or a prefix.
        fleet_flags[3]="env.remote=$remote"
    fi
    alone=$("$python" bench/env_direct.py "${direct_flags[@]}" 2>/dev/null | rate)
    through=$("$fleet" "${fleet_flags[@]}" bench env --seconds "$seconds" --json 2>/dev/null | rate)
    python3 - "$env" "$backend" "$num_envs" "$streams" "$alone_mode" "$alone" "$through" "$frame_skip" <<'PY'
import sys
env, backend, num_envs, streams, alone_mode, alone, through, frame_skip = sys.argv[1:]
alone, through, frame_skip = float(alone), float(through), int(frame_skip)
alone_name = {"bridge": "EnvVector", "gymnasium": "Gymnasium vector"}[alone_mode]
ratio = through / alone
print(
    f"| {env} | {backend} | {num_envs} | {streams} | {alone_name} | {alone:,.0f} | {through:,.0f} | "
    f"{through * frame_skip:,.0f} | {ratio:.2f} | {1 - ratio:.0%} |"
)
PY
done
