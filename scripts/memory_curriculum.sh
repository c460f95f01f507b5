#!/usr/bin/env bash
# Trains an LSTM agent on memory-chain-100 through a curriculum over the
# horizon: each stage is one `fleet run` that resumes the learner from the
# previous stage's checkpoint (learner.checkpoint_dir) and stops once the
# return reaches 0.9. Horizon 20 is learnt from scratch with sequences of 40
# learning steps every 20; from there every sequence holds one whole episode
# (horizon + 1 learning steps, starting at the cue). docs/RESULTS.md, "Memory
# over 100 steps", has the runs and why the horizon grows in small steps.
#
# Usage: scripts/memory_curriculum.sh SEED CHECKPOINT_DIR [HORIZON...]
#   (default horizons 30 40 50 65 80 100; FLEET names the binary, default
#   `fleet` on PATH; extra flags for every stage in FLEET_ARGS)
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 SEED CHECKPOINT_DIR [HORIZON...]" >&2
    exit 2
fi
seed=$1
checkpoints=$2
shift 2
horizons=("$@")
if [[ ${#horizons[@]} -eq 0 ]]; then
    horizons=(30 40 50 65 80 100)
fi
fleet=${FLEET:-fleet}
if [[ -e "$checkpoints" && -n "$(ls -A "$checkpoints")" ]]; then
    echo "$checkpoints is not empty: the first stage would resume from it" >&2
    exit 2
fi

common=(
    --seed "$seed"
    --set network.core=lstm --set network.lstm_size=64
    --set network.lstm_forget_bias=1.0
    --set learner.learning_rate=0.001 --set learner.entropy_cost=0.01
    --set "learner.checkpoint_dir=$checkpoints"
    --set learner.checkpoint_interval_secs=30
    --target-return 0.9 --max-env-steps 2000000
)
# FLEET_ARGS is split on spaces on purpose: it holds further flags.
# shellcheck disable=SC2206
extra=(${FLEET_ARGS:-})

stage() {
    local horizon=$1
    shift
    echo "== memory-chain-$horizon"
    "$fleet" run "${common[@]}" --set "env.name=memory-chain-$horizon" "$@" "${extra[@]}"
}

stage 20 --set actor.unroll_length=40 --set actor.period=20
for horizon in "${horizons[@]}"; do
    stage "$horizon" --set "actor.unroll_length=$((horizon + 1))"
done
