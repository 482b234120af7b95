#!/usr/bin/env bash
# GPU-scale pretraining in one timed call (issue 12, item 2): a broad corpus written in parallel,
# then two tiny-preset runs side by side on one GPU, 8x the CPU run's batch:
#   A  resumes a CPU run's checkpoint (RESUME_FROM) and continues it on the broad corpus;
#   B  starts from random initialisation on the same corpus (what GPU-scale pretraining buys alone).
# Without RESUME_FROM only B runs (with A's loader workers too).
# Kept checkpoints (config + weights, no optimiser state) come back as OUT/<run>_<step>.tar,
# the metrics and logs as OUT/logs.tar. Everything stops by DEADLINE_S seconds after the start.
#
#   OUT=/tmp/out RESUME_FROM=runs/pretrain_long/checkpoint_last bash benchmarks/gpu_pretrain.sh
#   OUT=/tmp/out DEADLINE_S=280 bash benchmarks/gpu_pretrain.sh          # B alone
#
# Knobs (environment): HOURS_EACH (corpus hours per writer job, 16 jobs), INSTANCES (machine instances
# per type and family), BATCH_S (audio seconds per batch), DEADLINE_S, DEVICE (cuda|cpu|auto),
# WORKERS (loader processes per run), KEEP_A / KEEP_B (checkpoints returned per run).
set -u
OUT=${OUT:?set OUT}
RESUME_FROM=${RESUME_FROM:-}
HOURS_EACH=${HOURS_EACH:-0.5}
INSTANCES=${INSTANCES:-32}
BATCH_S=${BATCH_S:-192}
DEADLINE_S=${DEADLINE_S:-540}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-5}
KEEP_A=${KEEP_A:-3}
KEEP_B=${KEEP_B:-2}
WORK=${WORK:-/tmp/gpu_pretrain}
PY=${PY:-python3}
T0=$(date +%s)
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

say "host $(hostname) $(nproc --all) cores; $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"

# 1. Corpus: 4 machine types x 4 seeds writers in parallel (same instances, different clips per seed).
rm -rf "$WORK/corpus"
writers=()
for m in fan pump valve slider; do
    for s in 11 12 13 14; do
        $PY -m aiot_w2v2 synth --suite pretrain --machines "$m" --hours "$HOURS_EACH" --instances "$INSTANCES" \
            --seed "$s" --out "$WORK/corpus/${m}_$s" > "$WORK/synth_${m}_$s.log" 2>&1 &
        writers+=($!)
    done
done
wait "${writers[@]}"  # (a bare `wait` would also wait for the tee of the log)
dirs=("$WORK"/corpus/*)
say "corpus: ${#dirs[@]} folders, $(find "$WORK/corpus" -name '*.wav' | wc -l) clips, $(du -sh "$WORK/corpus" | cut -f1)"

# 2. Two runs side by side, both stopped by wall time before the deadline.
left=$(( DEADLINE_S - ($(date +%s) - T0) - 50 ))
minutes=$($PY -c "print(max(0.5, ($left - 25) / 60))")
say "training for $minutes minutes each"
common=(--config tiny --data "${dirs[@]}" --quiet --set "data.max_batch_seconds=$BATCH_S"
        --set "data.num_workers=$WORKERS" --set train.save_every=250 --set train.log_every=50
        --set "train.max_minutes=$minutes" --set "train.device=$DEVICE")
rm -rf "$WORK/A" "$WORK/B"
mkdir -p "$WORK/A"
pid_a=0 keep_a=0
if [ -n "$RESUME_FROM" ]; then
    cp -r "$RESUME_FROM" "$WORK/A/checkpoint_last"
    timeout "$left" $PY -m aiot_w2v2 pretrain "${common[@]}" --out "$WORK/A" --resume \
        --set optim.max_steps=24000 > "$WORK/A.log" 2>&1 &
    pid_a=$!
    bash benchmarks/keep_checkpoints.sh "$WORK/A" "$pid_a" 5 > "$WORK/keep_A.log" 2>&1 &
    keep_a=$!
else
    common+=(--set "data.num_workers=$(( 2 * WORKERS ))")  # the later --set wins
fi
timeout "$left" $PY -m aiot_w2v2 pretrain "${common[@]}" --out "$WORK/B" \
    --set optim.max_steps=20000 --set optim.warmup_steps=300 > "$WORK/B.log" 2>&1 &
pid_b=$!
bash benchmarks/keep_checkpoints.sh "$WORK/B" "$pid_b" 5 > "$WORK/keep_B.log" 2>&1 &
keep_b=$!
( while { [ "$pid_a" != 0 ] && kill -0 "$pid_a" 2>/dev/null; } || kill -0 "$pid_b" 2>/dev/null; do
      sleep 30; say "A $(tail -n 1 "$WORK/A/metrics.csv" 2>/dev/null | cut -d, -f1,3,7,16)" \
                    "B $(tail -n 1 "$WORK/B/metrics.csv" 2>/dev/null | cut -d, -f1,3,7,16)"
  done ) &
watch=$!
[ "$pid_a" != 0 ] && { wait "$pid_a"; say "A exited $?"; wait "$keep_a"; }
wait "$pid_b"; say "B exited $?"
wait "$keep_b"
kill "$watch" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null

# 3. Bring back evenly spaced checkpoints (always the last) and the logs.
pick() {  # RUN COUNT -> the chosen ckpt folder names
    ls -d "$1"/ckpt_* 2>/dev/null | sed 's/.*ckpt_//' | sort -n | awk -v k="$2" '
        { s[NR] = $1 } END { if (NR == 0) exit; for (i = k; i >= 1; i--) { j = int(NR * i / k); if (j < 1) j = 1;
          if (!(j in seen)) { seen[j] = 1; print "ckpt_" s[j] } } }'
}
for spec in "A $KEEP_A" "B $KEEP_B"; do
    set -- $spec
    for c in $(pick "$WORK/$1" "$2"); do
        tar -C "$WORK/$1/$c" -cf "$OUT/$1_${c#ckpt_}.tar" config.json model.safetensors && say "kept $1/$c"
    done
done
tar -C "$WORK" -cf "$OUT/logs.tar" A.log B.log keep_A.log keep_B.log A/metrics.csv B/metrics.csv \
    synth_fan_11.log 2>/dev/null
ls -la "$OUT"
say "done"
