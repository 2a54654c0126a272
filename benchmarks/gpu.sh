#!/usr/bin/env bash
# One prepared GPU benchmark run: the canonical MAML workload (Conv-4 strided, 5-way 1-shot,
# 15 and 1 queries per class, meta-batch 32, 1 and 5 inner steps at lr 0.4, Adam 1e-3,
# second and first order) -> ms per meta-step, compile time, device memory peak, and the
# projected time of a 60k-iteration MAML run. Writes JSON; prints a Markdown table.
#
# Usage (from the repository root, on the GPU machine):
#   bash benchmarks/gpu.sh [OUT_DIR]        # default: $OUT if set, else benchmarks/results/gpu
# Environment:
#   PYTHON       interpreter to use/extend (default: python3)
#   WHEELHOUSE   folder of wheels for offline installs (pip --no-index --find-links)
#   JAX_CUDA     pip requirement for CUDA JAX (default: "jax[cuda12]==<installed jax version>")
#   BUDGET_S     timed seconds per configuration (default 3)
#   SKIP_INSTALL=1  never pip install; fail if jax sees no GPU
#   ALLOW_CPU=1  dry run without a GPU (checks the script; CPU numbers)
#   RUNNER       auto (maml_step.py if present, else throughput.py) | maml_step | throughput | both
#   EXTRA_ARGS   more throughput.py options, e.g. "--canonical-queries 1 --canonical-inner-steps 1"
#   STEP_ARGS    more maml_step.py options, e.g. "--queries 1 --inner-steps 1"
#
# Steps: (1) use $PYTHON if its jax already sees a GPU; otherwise (2) make .venv-gpu from
# $PYTHON (system site packages visible), install CUDA JAX there (plus jaxmeta, editable,
# without touching its other dependencies when they are already present); (3) run the
# canonical workload (RUNNER below); (4) write OUT_DIR/maml_step.json or gpu_canonical.json,
# OUT_DIR/projection.md (ms -> hours for 60k meta-steps) and OUT_DIR/environment.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-3}"
log() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" >&2; }

has_gpu() {
  "$1" - <<'EOF' 2>/dev/null
import jax, sys
sys.exit(0 if jax.default_backend() == "gpu" else 1)
EOF
}

{ date -u; uname -a; nvidia-smi 2>&1 | head -15; "$PY" --version; } > "$OUT_DIR/environment.txt" 2>&1

if [ "${ALLOW_CPU:-0}" = 1 ]; then
  log "ALLOW_CPU=1: dry run on whatever backend $PY's jax has"
elif ! has_gpu "$PY"; then
  if [ "${SKIP_INSTALL:-0}" = 1 ]; then log "jax sees no GPU and SKIP_INSTALL=1"; exit 2; fi
  log "jax (in $PY) sees no GPU: installing CUDA JAX into .venv-gpu"
  "$PY" -m venv --system-site-packages .venv-gpu || { log "venv failed"; exit 2; }
  VPY=.venv-gpu/bin/python
  JAXV=$("$VPY" -c "import jax; print(jax.__version__)" 2>/dev/null || echo "")
  REQ="${JAX_CUDA:-jax[cuda12]${JAXV:+==$JAXV}}"
  PIPOPTS=()
  if [ -n "${WHEELHOUSE:-}" ]; then PIPOPTS=(--no-index --find-links "$WHEELHOUSE"); fi
  log "pip install $REQ ${PIPOPTS[*]:-}"
  "$VPY" -m pip install -q "${PIPOPTS[@]}" "$REQ" 2>&1 | tail -5 >&2
  # jaxmeta itself; its dependencies only if missing (pip resolves what is already there).
  "$VPY" -c "import jaxmeta" 2>/dev/null || "$VPY" -m pip install -q "${PIPOPTS[@]}" -e . 2>&1 | tail -5 >&2
  PY="$VPY"
  if ! has_gpu "$PY"; then
    log "still no GPU backend after installing; see $OUT_DIR/environment.txt"
    "$PY" -c "import jax; print(jax.devices())" >> "$OUT_DIR/environment.txt" 2>&1
    exit 3
  fi
fi
"$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  >> "$OUT_DIR/environment.txt" 2>&1
log "$(tail -1 "$OUT_DIR/environment.txt")"

rc=0
# One runner for the canonical workload (device time is scarce): maml_step.py (the project's
# canonical-step script) when present, else throughput.py --preset canonical. RUNNER=
# maml_step|throughput forces one; RUNNER=both runs both.
RUNNER="${RUNNER:-auto}"
if [ "$RUNNER" = auto ]; then
  if [ -f benchmarks/maml_step.py ]; then RUNNER=maml_step; else RUNNER=throughput; fi
fi
RESULTS=()
if [ "$RUNNER" = maml_step ] || [ "$RUNNER" = both ]; then
  log "canonical workload via maml_step.py ${STEP_ARGS:-}"
  timeout 420 "$PY" benchmarks/maml_step.py --budget-s "$BUDGET_S" --timeout-s 200 \
    --json "$OUT_DIR/maml_step.json" ${STEP_ARGS:-} 2>&1 | tee "$OUT_DIR/maml_step.txt" \
    || { log "maml_step.py failed (see maml_step.txt)"; rc=1; }
  RESULTS+=("$OUT_DIR/maml_step.json")
fi
if [ "$RUNNER" = throughput ] || [ "$RUNNER" = both ]; then
  log "canonical workload via throughput.py --preset canonical ${EXTRA_ARGS:-}"
  timeout 420 "$PY" benchmarks/throughput.py --preset canonical --budget-s "$BUDGET_S" \
    --project-steps 60000 --timeout-s 200 --no-plots --json "$OUT_DIR/gpu_canonical.json" \
    ${EXTRA_ARGS:-} | tee "$OUT_DIR/gpu_canonical.md" || rc=1
  RESULTS+=("$OUT_DIR/gpu_canonical.json")
fi

# Projection of a 60k-iteration MAML run from the measured step times.
"$PY" - "${RESULTS[@]}" <<'EOF' | tee "$OUT_DIR/projection.md"
import json, os, sys
print("| source | order | K | Q/class | ms/meta-step | 60k meta-steps (h) | device |")
print("|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    doc = json.load(open(path))
    recs = doc if isinstance(doc, list) else doc.get("results", [])
    src = os.path.basename(path)
    for r in recs:
        q = r.get("query_per_class", r.get("queries"))
        if "error" in r:
            print(f"| {src} | {r.get('order')} | {r.get('inner_steps')} | {q} | error: "
                  f"{str(r['error'])[:80]} | | |")
            continue
        ms = r["ms_per_step"]
        print(f"| {src} | {r['order']} | {r['inner_steps']} | {q} | {ms:.2f} | "
              f"{ms * 60000 / 3.6e6:.2f} | {r.get('device_kind', r.get('device'))} |")
EOF
log "done (rc=$rc); results in $OUT_DIR"
exit $rc
