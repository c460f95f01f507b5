#!/usr/bin/env bash
# The env bridge's overhead: each environment vector stepped with random
# actions through the bridge (`fleet bench env`: Rust actor side, gRPC, the
# Python server) and by the same Python code alone (bench/env_direct.py),
# one after the other in the same run. Prints a Markdown table; a negative
# overhead means the bridge's streams (server processes stepping side by
# side) outran the one Python process alone.
#
#   bench/env_bridge.sh PYTHON [SECONDS] [NUM_ENVS]
#
# PYTHON has fleet-envbridge installed with its atari and envpool extras.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${1:?usage: $0 PYTHON [SECONDS] [NUM_ENVS]}"
seconds="${2:-20}"
num_envs="${3:-16}"
fleet=target/release/fleet
cargo build --release --quiet --bin fleet
bridge="env.bridge_command=[\"$python\", \"-m\", \"fleet_envbridge.cli\", \"--log-level\", \"WARNING\"]"

rate() { sed -E 's/.*"steps_per_second": ?([0-9.]+).*/\1/'; }

echo "| env | backend | num_envs | bridge streams | alone: steps/s | bridge: steps/s | bridge: env frames/s | overhead |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
# name, atari preprocessing (yes/no), the backend that serves the name, bridge
# streams (each a server process of its own)
for row in "gym:ALE/Pong-v5 yes gymnasium 1" "gym:ALE/Pong-v5 yes gymnasium 2" "envpool:Pong-v5 yes envpool 1" \
    "CartPole-v1 no gymnasium 1" "MinAtar/Breakout-v1 no gymnasium 1"; do
    read -r env atari backend streams <<<"$row"
    direct_flags=(--env "$env" --num-envs "$num_envs" --seconds "$seconds")
    fleet_flags=(--set "env.name=$env" --set "env.remote=" --set "$bridge" --set "actor.num_envs=$num_envs"
        --set "env.bridge_streams=$streams")
    frame_skip=1
    if [[ "$atari" == yes ]]; then
        direct_flags+=(--atari)
        fleet_flags+=(--set env.preprocess=atari)
        frame_skip=4
    fi
    if [[ "$env" != *:* ]]; then
        # A bare id goes to the bridge only with an address or a prefix.
        fleet_flags[1]="env.name=gym:$env"
    fi
    alone=$("$python" bench/env_direct.py "${direct_flags[@]}" 2>/dev/null | rate)
    through=$("$fleet" "${fleet_flags[@]}" bench env --seconds "$seconds" --json 2>/dev/null | rate)
    python3 - "$env" "$backend" "$num_envs" "$streams" "$alone" "$through" "$frame_skip" <<'PY'
import sys
env, backend, num_envs, streams, alone, through, frame_skip = sys.argv[1:]
alone, through, frame_skip = float(alone), float(through), int(frame_skip)
overhead = 1 - through / alone
print(f"| {env} | {backend} | {num_envs} | {streams} | {alone:,.0f} | {through:,.0f} | {through * frame_skip:,.0f} | {overhead:.0%} |")
PY
done
