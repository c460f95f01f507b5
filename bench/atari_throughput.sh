#!/usr/bin/env bash
# Atari Pong throughput on this machine, everything in one run, one after the
# other: fleet training on config/atari-impala.toml (`fleet bench e2e`, 2 actors,
# feed-forward) with its environments served by Gymnasium (ale-py's Pong
# with Gymnasium's Atari preprocessing, `gym:ALE/Pong-v5`) and by envpool
# (`envpool:Pong-v5`, one bridge stream per actor); Sample Factory 2.1.1 APPO on its envpool Atari
# launcher (bench/sample_factory_cartpole.sh --env pong, the same 2 x 16
# environments and shallow CNN); and the environments alone: a
# 16-environment Pong vector of each backend stepped with random actions by
# Python without gRPC and through the bridge (bench/env_bridge.sh), which
# gives the bridge's overhead. Prints env frames/s (emulator frames, 4 per
# agent step) and fleet's ratios to Sample Factory.
#
#   bash bench/atari_throughput.sh PYTHON [--seconds S] [--warmup S]
#
# PYTHON has fleet-envbridge installed with its atari and envpool extras.
# FLEET names the fleet binary (default target/release/fleet, built here
# when FLEET is unset). Nothing else should run on the machine meanwhile.
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

# The actors start `fleet-envbridge` from PATH: the one beside PYTHON.
# Gymnasium steps Pong holding Python's GIL, so the config's two bridge
# servers per actor step its two halves on two cores; envpool steps the
# whole vector on its own threads, and a second server (a second pool of
# threads on the same two cores) slows it: one stream there.
for row in "gym:ALE/Pong-v5 2" "envpool:Pong-v5 1"; do
    read -r env streams <<<"$row"
    echo "## fleet: fleet bench e2e --config config/atari-impala.toml, 2 actors, $env, $streams bridge stream(s)" >&2
    PATH="$(dirname "$python"):$PATH" "$fleet" bench e2e --config config/atari-impala.toml --set "env.name=$env" \
        --set "env.bridge_streams=$streams" \
        --actors 2 --cores none --seconds "$seconds" --warmup "$warmup" --json | tee -a "$out/fleet" >&2
done

echo "## Sample Factory 2.1.1 APPO, envpool Pong-v5" >&2
bash bench/sample_factory_cartpole.sh --env pong --seconds "$seconds" --warmup "$warmup" | tee "$out/sample-factory" >&2

echo "## the environments alone and through the bridge" >&2
bash bench/env_bridge.sh "$python" "$seconds" 16 \
    "gym:ALE/Pong-v5 yes gymnasium 1 bridge" "gym:ALE/Pong-v5 yes gymnasium 2 bridge" \
    "envpool:Pong-v5 yes envpool 1 bridge" "envpool:Pong-v5 yes envpool 2 bridge" | tee "$out/env" >&2

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
fleet = [json.loads(line) for line in open(f"{out}/fleet").read().split("\n") if line.startswith("{")]
sf = json.loads(open(f"{out}/sample-factory").read().strip().splitlines()[-1])
frame_skip = 4
sf_frames = sf["env_frames_per_second"]
print("| system | agent steps/s | env frames/s | learner updates/s | frames/s / Sample Factory's |")
print("| --- | ---: | ---: | ---: | ---: |")
for row in fleet:
    frames = row["env_steps_per_second"] * frame_skip
    print(f"| fleet, 2 actors x 16 envs, {row['env']} | {row['env_steps_per_second']:,.0f} | {frames:,.0f} | "
          f"{row['learner_updates_per_second']:.2f} | {frames / sf_frames:.2f} |")
print(f"| Sample Factory {sf['version']} APPO, 2 workers x 16 envs, envpool Pong-v5 | {sf['env_steps_per_second']:,.0f} | "
      f"{sf_frames:,.0f} | {sf['learner_updates_per_second']:.2f} | 1.00 |")
print()
print(open(f"{out}/env").read(), end="")
PY
