#!/usr/bin/env bash
# Atari Pong throughput on this machine, everything in one run, one after the
# other: fleet training on config/atari.toml (`fleet bench e2e`, 2 actors,
# feed-forward), Sample Factory 2.1.1 APPO on its envpool Atari launcher
# (bench/sample_factory_cartpole.sh --env pong, the same 2 x 16 environments
# and shallow CNN), and the environments alone: a 16-environment Pong vector
# stepped with random actions by Python without gRPC and through the bridge
# (bench/env_bridge.sh), which gives the bridge's overhead. Prints env frames/s
# (emulator frames, 4 per agent step) and fleet's ratio to Sample Factory.
#
#   bash bench/atari_throughput.sh PYTHON [--seconds S] [--warmup S]
#
# PYTHON has fleet-envbridge installed with its atari and envpool extras
# (envpool serves gym:ALE/Pong-v5 when installed). FLEET names the fleet
# binary (default target/release/fleet, built here when FLEET is unset).
# Nothing else should run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${1:?usage: $0 PYTHON [--seconds S] [--warmup S]}"
shift
seconds=60
warmup=20
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        *) echo "usage: $0 PYTHON [--seconds S] [--warmup S]" >&2; exit 2 ;;
    esac
done

if [[ -z ${FLEET:-} ]]; then
    cargo build --release --locked --bin fleet
fi
fleet="$(realpath "${FLEET:-target/release/fleet}")"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "## fleet: fleet bench e2e --config config/atari.toml, 2 actors" >&2
# The actors start `fleet-envbridge` from PATH: the one beside PYTHON.
PATH="$(dirname "$python"):$PATH" "$fleet" bench e2e --config config/atari.toml --actors 2 --cores none \
    --seconds "$seconds" --warmup "$warmup" --json | tee "$out/fleet" >&2

echo "## Sample Factory 2.1.1 APPO, envpool Pong-v5" >&2
bash bench/sample_factory_cartpole.sh --env pong --seconds "$seconds" --warmup "$warmup" | tee "$out/sample-factory" >&2

echo "## the environments alone and through the bridge" >&2
bash bench/env_bridge.sh "$python" "$seconds" 16 \
    "gym:ALE/Pong-v5 yes envpool 1 bridge" "gym:ALE/Pong-v5 yes envpool 2 bridge" | tee "$out/env" >&2

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
fleet = json.loads(open(f"{out}/fleet").read().strip().splitlines()[-1])
sf = json.loads(open(f"{out}/sample-factory").read().strip().splitlines()[-1])
frame_skip = 4
fleet_frames = fleet["env_steps_per_second"] * frame_skip
sf_frames = sf["env_frames_per_second"]
print("| system | agent steps/s | env frames/s | learner updates/s | fleet / this |")
print("| --- | ---: | ---: | ---: | ---: |")
print(f"| fleet, 2 actors x 16 envs | {fleet['env_steps_per_second']:,.0f} | {fleet_frames:,.0f} | "
      f"{fleet['learner_updates_per_second']:.2f} | 1.00 |")
print(f"| Sample Factory {sf['version']} APPO, 2 workers x 16 envs | {sf['env_steps_per_second']:,.0f} | "
      f"{sf_frames:,.0f} | {sf['learner_updates_per_second']:.2f} | {fleet_frames / sf_frames:.2f} |")
print()
print(open(f"{out}/env").read(), end="")
PY
