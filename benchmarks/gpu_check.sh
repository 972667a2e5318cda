#!/usr/bin/env bash
# The GPU check, in one command (≤ 10 minutes on an H100/H200): TRL 1.16's GOLDTrainer vs gold at the DESIGN §7
# shapes (off- and on-policy, hybrid and ULD), the model-compute floor, peak memory and gold's GPU-marked tests, into
# one JSON (benchmarks/gpu_check.py says what each figure is).
#
#   benchmarks/gpu_check.sh [--wheels DIR] [--out FILE] [gpu_check.py options, e.g. --device cpu --tiny]
#
# The GPU machines have torch with CUDA, transformers, numpy, numba and triton, but no package index and no trl,
# rapidfuzz or datasets: carry the wheels `benchmarks/gpu_wheels.sh DIR` downloads (here, where pip reaches PyPI) and
# pass --wheels DIR there; they are installed with --no-index --no-deps before anything runs. gold itself is put on
# PYTHONPATH from this checkout (no build step). `--device cpu --tiny` is the dry run CI makes (under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=""
out=benchmarks/results_gpu_check.json
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || { echo "gpu_check.sh: --wheels $wheels is not a folder" >&2; exit 2; }
  "$python" -m pip install -q --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRL_EXPERIMENTAL_SILENCE=1
missing=$("$python" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "accelerate", "trl", "datasets", "pandas", "rapidfuzz", "numba", "yaml")
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check.sh: missing Python packages: $missing; carry their wheels (benchmarks/gpu_wheels.sh DIR) and pass" \
       "--wheels DIR" >&2
  exit 2
fi
exec timeout 600 "$python" -m benchmarks.gpu_check --json "$out" "${args[@]}"
