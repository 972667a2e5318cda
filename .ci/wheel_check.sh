#!/usr/bin/env bash
# A built wheel works: build the sdist and the wheel (the wheel from the sdist), check their metadata with twine,
# install the wheel (not editable) into a new virtual environment with the CPU torch first, and run gold from a
# folder outside the checkout, so that nothing can be read from the repository.
# Run through `make wheel-check` (which passes the Makefile's torch pin and zoo packages); needs .venv with the test
# extras (build, twine).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TORCH_PIN:?run through make wheel-check}" "${ZOO_NO_DEPS:?run through make wheel-check}"
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/gold-wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== build sdist and wheel"
.venv/bin/python -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls -l "$work/dist"
.venv/bin/python -m twine check --strict "$work"/dist/*

echo "== install the wheel into a new environment"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q "$TORCH_PIN"
wheel=$(ls "$work"/dist/*.whl)
"$work/venv/bin/pip" install -q "${wheel}[zoo]"
# shellcheck disable=SC2086  # a list of requirements
"$work/venv/bin/pip" install -q --no-deps $ZOO_NO_DEPS

echo "== run from outside the checkout"
cd "$work"
printf 'Le café ouvre à 9h30. 東京は日本の首都です。 def f(x): return x + 1\n' >sample.txt
bin="$work/venv/bin"
"$bin/python" - <<'PY'
import alignment, gold
from pathlib import Path
for module in (alignment, gold):
    where = Path(module.__file__).resolve()
    assert "site-packages" in where.parts, f"{module.__name__} imported from {where}, not from the installed wheel"
print("import gold, alignment:", gold.__version__, "from", Path(gold.__file__).parent)
PY
"$bin/gold" --version
"$bin/gold" --help >/dev/null && echo "gold --help: ok"
"$bin/gold" align --student smollm2 --teacher gemma-3 --file sample.txt --max-groups 8
"$bin/gold" demo --alignment-only --out "$work/demo"
echo "wheel check: passed"
