#!/usr/bin/env bash
# One prepared run on the offline GPU machine (one H100/H200, Python 3.12 with jax + CUDA,
# flax, optax, orbax, torch; no tensorflow-datasets, no pip, no network): the checkout on
# PYTHONPATH and the git-ignored .gpu/ bundle from ../shared/gpu/offline-bundle.sh (the
# prepared Omniglot cache, the PyTorch peers harness, the `higher` wheel).
#
#   source .gpu/env.sh && bash benchmarks/gpu.sh "$OUT"        # on the GPU machine
#   ALLOW_CPU=1 bash benchmarks/gpu.sh /tmp/gpu-dry             # dry run anywhere (tiny)
#
# Stages, each bounded in time, each archived into OUT as soon as it ends (so a run cut
# by the machine's limit still returns what it finished); at most 8 files land in OUT:
#   1 lowering.tar.gz  benchmarks/lowering.py: lax.conv vs GEMM for every canonical
#                      meta-step config and the paper-protocol training step (default
#                      and full-float32 matmul precision), a profile of the default
#                      step and its per-kernel summary (profile_summary.py)
#   2 compare.tar.gz   benchmarks/compare_pytorch.py --device cuda: PyTorch (torch.func;
#                      TORCH_IMPLS) on the same configs, jaxmeta rows from stage 1
#   3 (in repro)       `jaxmeta train` of maml_5w1s_paper.yaml alone: the wall time of a
#                      paper-length run, validation and the 600-episode test included
#   4 repro.tar.gz     benchmarks/accuracy.py --paper-length: every algorithm on Omniglot
#                      5w1s and MAML + ProtoNets 20w1s, PARALLEL runs at once on the GPU,
#                      until the deadline; runs the deadline cut are tested from their
#                      best checkpoint (`jaxmeta evaluate`); a report of all of them
#     trained_models.tar.gz  the MAML and ProtoNets 5w1s workdirs with their checkpoints
#                      (portable: `jaxmeta evaluate --workdir <unpacked dir>`, or resume)
#   5 populations.tar.gz  (not in the default STAGES) benchmarks/populations.py: ms per
#                      run-step of the MAML training step against runs vmapped (S = 1..64),
#                      then `jaxmeta train` of maml_5w1s_paper_16seeds.yaml (16 seeds in
#                      one program) with its wall time, next to stage 3's one run: the
#                      target is < 2x. Paper length needs STAGES="3 5" and a DEADLINE_S of
#                      about 3 x the one run's time (~11 min at 92 steps/s)
#   gpu.log            everything printed
# Environment: DEADLINE_S (seconds for all stages, default 570), ALLOW_CPU=1 (no GPU
# needed; tiny settings), TORCH_IMPLS (default func), PARALLEL (default 10), STAGES
# (default "1 2 3 4"), PYTHON (default python3), STAGE1_S / STAGE2_S (stage limits,
# default 120 / 80), LOWERING_ARGS / COMPARE_ARGS (replace the GPU options of stage 1/2).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/jaxmeta-gpu}}"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jaxmeta-gpu.XXXX")
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-570}"
PARALLEL="${PARALLEL:-10}"
STAGES="${STAGES:-1 2 3 4}"
T0=$(date +%s)
# Several processes share one GPU (stage 4): no process may take most of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT_DIR/gpu.log") 2>&1

left() { echo $((DEADLINE_S - ($(date +%s) - T0))); }
log() { echo "[gpu.sh +$(($(date +%s) - T0))s] $*"; }
# bounded SECONDS CMD...: run CMD with at most SECONDS (and never past the deadline)
bounded() {
  local s=$1; shift
  local l; l=$(left)
  [ "$s" -gt "$l" ] && s=$l
  if [ "$s" -le 5 ]; then log "skipped (deadline): $*"; return 124; fi
  timeout --signal=TERM --kill-after=10 "$s" "$@"
}
stage() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }

if [ "${ALLOW_CPU:-0}" = 1 ]; then
  log "ALLOW_CPU=1: dry run with tiny settings on $("$PY" -c 'import jax; print(jax.default_backend())')"
  LOWERING=(--quick --orders second --filters 8 --meta-batch 2 --budget-s 0.2 --min-repeats 2 --warmup 1
    --steps-per-call 2 --precisions default --impls gemm)
  COMPARE=(--quick --tiny --repeats 1 --orders second)
  TINY=(--set model.filters=8 --set train.meta_batch_size=2 --set train.steps=4
    --set train.steps_per_call=2 --set train.log_every=2 --set train.eval_every=2
    --set train.checkpoint_every=2 --set eval.episodes=8 --set eval.val_episodes=8
    --set eval.batch_size=4 --set eval.queries=2 --set train.plot=false)
  REPRO=(--tiny)
  PAPER=()
  SETTINGS_5W1S=protonets
  SETTINGS_20W1S=""
else
  "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' \
    || { log "jax sees no GPU (ALLOW_CPU=1 for a dry run)"; exit 2; }
  read -r -a LOWERING <<< "${LOWERING_ARGS:---precompile 8 --budget-s 1 --max-repeats 400}"
  read -r -a COMPARE <<< "${COMPARE_ARGS:---repeats 1 --budget-s 1}"
  TINY=()
  REPRO=(--paper-length --steps-per-call 100 --evals 20)
  PAPER=(--paper-length)
  SETTINGS_5W1S=maml,fomaml,anil,metasgd,reptile,protonets,matching,snail
  SETTINGS_20W1S=maml,protonets
fi

{
  date -u
  nvidia-smi 2>&1 | head -15
  "$PY" --version
  "$PY" -c 'import jax, jaxlib, flax, optax; print("jax", jax.__version__, "jaxlib",
jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
  git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
} > "$OUT_DIR/environment.txt" 2>&1
log "$(tail -n +1 "$OUT_DIR/environment.txt" | grep '^jax ')"

if stage 1; then
  log "stage 1: convolution lowering (benchmarks/lowering.py ${LOWERING[*]})"
  mkdir -p "$WORK/lowering"
  bounded "${STAGE1_S:-120}" "$PY" benchmarks/lowering.py "${LOWERING[@]}" --json "$WORK/lowering/lowering.json" \
    --profile "$WORK/lowering/profile" | tee "$WORK/lowering/lowering.md"
  log "stage 1 rc=$?"
  if [ -d "$WORK/lowering/profile/trace" ]; then
    steps=$(( ${#TINY[@]} ? 10 : 50 ))
    "$PY" benchmarks/profile_summary.py "$WORK/lowering/profile/trace" --steps "$steps" \
      --json "$WORK/lowering/profile_summary.json" | tee "$WORK/lowering/profile_summary.md"
    find "$WORK/lowering/profile" -name '*.xplane.pb' -delete  # 10-100 MB; the JSON trace stays
  fi
  tar -czf "$OUT_DIR/lowering.tar.gz" -C "$WORK" lowering
fi

if stage 2; then
  TORCH_PY="${JAXMETA_TORCH_PYTHON:-$PY}"
  PEERS_DIR=$(dirname "${PEERS:-../shared/peers/torch_maml.py}")
  DEVICE=cuda; [ "${ALLOW_CPU:-0}" = 1 ] && DEVICE=cpu
  log "stage 2: PyTorch on the same configs (impls ${TORCH_IMPLS:-func}, $DEVICE)"
  mkdir -p "$WORK/compare"
  JAX_FROM=()
  [ -f "$WORK/lowering/lowering.json" ] && JAX_FROM=(--jax-from "$WORK/lowering/lowering.json")
  bounded "${STAGE2_S:-80}" "$PY" benchmarks/compare_pytorch.py "${COMPARE[@]}" --device "$DEVICE" \
    --torch-python "$TORCH_PY" --peers-dir "$PEERS_DIR" --torch-impls "${TORCH_IMPLS:-func}" \
    "${JAX_FROM[@]}" --json "$WORK/compare/compare_pytorch.json" | tee "$WORK/compare/compare.md"
  log "stage 2 rc=$?"
  tar -czf "$OUT_DIR/compare.tar.gz" -C "$WORK" compare
fi

R="$WORK/repro"
if stage 3; then
  log "stage 3: maml_5w1s_paper.yaml alone (jaxmeta train, wall time)"
  wd="$R/5w1s/runs/maml_5w1s"
  mkdir -p "$wd"
  t=$(date +%s%N)
  bounded 120 "$PY" -m jaxmeta train --config configs/omniglot/maml_5w1s_paper.yaml \
    --workdir "$wd" --no-progress --set data.download=false --set train.keep_checkpoints=1 \
    "${TINY[@]}" > "$wd/train.log" 2>&1
  rc=$?
  echo "{\"rc\": $rc, \"wall_ms\": $((($(date +%s%N) - t) / 1000000))}" > "$wd/wall.json"
  log "stage 3 rc=$rc, $(cat "$wd/wall.json")"; tail -3 "$wd/train.log"
fi

if stage 4; then
  log "stage 4: reproductions, $PARALLEL at once, until the deadline"
  args=(--parallel "$PARALLEL" "${REPRO[@]}" --set train.keep_checkpoints=1)
  [ -n "${TFDS_DATA_DIR:-}" ] && args+=(--data-dir "$TFDS_DATA_DIR")
  mkdir -p "$R/5w1s" "$R/20w1s"
  budget=$(($(left) - 75))
  bounded "$budget" "$PY" benchmarks/accuracy.py "${args[@]}" --setting 5w1s \
    --algorithms "$SETTINGS_5W1S" --out "$R/5w1s" > "$R/5w1s.log" 2>&1 &
  p1=$!
  p2=""
  if [ -n "$SETTINGS_20W1S" ]; then
    bounded "$budget" "$PY" benchmarks/accuracy.py "${args[@]}" --setting 20w1s \
      --algorithms "$SETTINGS_20W1S" --out "$R/20w1s" > "$R/20w1s.log" 2>&1 &
    p2=$!
  fi
  wait $p1 $p2
  log "stage 4 ended; testing the best checkpoints of runs the deadline cut"
  pids=()
  for wd in "$R"/*/runs/*; do
    [ -f "$wd/eval_test.json" ] || [ ! -d "$wd/best" ] && continue
    bounded 45 "$PY" -m jaxmeta evaluate --workdir "$wd" > "$wd/evaluate.log" 2>&1 &
    pids+=($!)
  done
  # Named pids: a bare `wait` would also wait for the `tee` of this script's output.
  [ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
fi

if stage 5; then
  P="$WORK/populations"
  mkdir -p "$P"
  POP_ARGS=(--config configs/omniglot/maml_5w1s.yaml --set data.queries=1
    --set execution.task_chunk=null --set data.download=false --budget-s 150)
  [ "${ALLOW_CPU:-0}" = 1 ] && POP_ARGS=(--runs 1,2 --budget-s 20 --per-size-s 0.5)
  log "stage 5: populations (benchmarks/populations.py ${POP_ARGS[*]})"
  bounded 200 "$PY" benchmarks/populations.py "${POP_ARGS[@]}" --out "$P" | tee "$P/bench.log"
  log "stage 5 benchmark rc=$?"
  wd="$P/runs/maml_5w1s_16seeds"
  mkdir -p "$wd"
  t=$(date +%s%N)
  bounded "$(($(left) - 30))" "$PY" -m jaxmeta train \
    --config configs/omniglot/maml_5w1s_paper_16seeds.yaml --workdir "$wd" --no-progress \
    --set data.download=false --set train.keep_checkpoints=1 "${TINY[@]}" > "$wd/train.log" 2>&1
  rc=$?
  echo "{\"rc\": $rc, \"wall_ms\": $((($(date +%s%N) - t) / 1000000)), \"one_run\": $(cat "$R/5w1s/runs/maml_5w1s/wall.json" 2>/dev/null || echo null)}" > "$wd/wall.json"
  log "stage 5 16 seeds rc=$rc, $(cat "$wd/wall.json")"; tail -20 "$wd/train.log"
  (cd "$WORK" && find populations -type f ! -path '*/checkpoints/*' ! -path '*/best/*' -print0 \
    | tar -czf "$OUT_DIR/populations.tar.gz" --null -T -)
fi

if [ -d "$R" ]; then
  for s in 5w1s 20w1s; do
    [ -d "$R/$s/runs" ] || continue
    "$PY" benchmarks/accuracy.py --report --setting "$s" --out "$R/$s" "${PAPER[@]}" \
      | tee "$R/report_$s.md"
  done
  # Metrics, results, logs and plots of every run; the checkpoints (SNAIL's alone are
  # ~70 MB) only of MAML and ProtoNets 5w1s, as trained models to try out.
  (cd "$WORK" && find repro -type f ! -path '*/checkpoints/*' ! -path '*/best/*' -print0 \
    | tar -czf "$OUT_DIR/repro.tar.gz" --null -T -)
  (cd "$WORK" && tar -czf "$OUT_DIR/trained_models.tar.gz" \
    $(ls -d repro/5w1s/runs/maml_5w1s repro/5w1s/runs/protonets_5w1s 2>/dev/null))
  ls -la "$OUT_DIR"
fi
log "done; results in $OUT_DIR"
