#!/usr/bin/env bash
# Keep intermediate checkpoints of a long pretraining run for the learning curve.
#
# The pretraining loop overwrites RUN/checkpoint_last every train.save_every updates and keeps no
# history. This loop polls it every POLL seconds and copies each new save aside to RUN/ckpt_<step>
# (weights, config and training state, so `aiot-w2v2 fit --run RUN/ckpt_<step>` works). A copy
# is written to a temporary folder and renamed only when the step it holds is still the step read
# before copying, so a save that lands during the copy never leaves a mixed folder behind.
# It exits when PID (the pretraining process) is gone, after one last copy.
#
#   nohup benchmarks/keep_checkpoints.sh RUN PID [POLL] > RUN/keep_checkpoints.log 2>&1 &
set -u
run=${1:?usage: keep_checkpoints.sh RUN PID [POLL]}
pid=${2:?usage: keep_checkpoints.sh RUN PID [POLL]}
poll=${3:-60}
last="$run/checkpoint_last"

step_of() {  # the update count a checkpoint folder holds, or nothing
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$1/train_state.json" 2>/dev/null
}

copy_once() {
    local step tmp
    step=$(step_of "$last") || return 0
    [ -n "$step" ] || return 0
    [ -d "$run/ckpt_$step" ] && return 0
    tmp="$run/.ckpt_$step.tmp"
    rm -rf "$tmp"
    cp -r "$last" "$tmp" || { rm -rf "$tmp"; return 0; }
    if [ "$(step_of "$tmp")" = "$step" ] && [ "$(step_of "$last")" = "$step" ]; then
        mv "$tmp" "$run/ckpt_$step" && echo "$(date -u +%FT%TZ) kept ckpt_$step"
    else
        rm -rf "$tmp"  # a new save landed meanwhile; the next poll copies that one
    fi
}

while kill -0 "$pid" 2>/dev/null; do
    copy_once
    sleep "$poll"
done
copy_once
echo "$(date -u +%FT%TZ) pretraining process $pid ended"
