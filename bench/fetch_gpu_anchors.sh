#!/usr/bin/env bash
# Fetch what a GPU session needs from outside the repository, into bench/.anchors/ (ignored by
# git, never committed; carried to the GPU machine, which has no network):
#
#   bench/.anchors/muon.py    Keller Jordan's Muon (KellerJordan/Muon), the anchor that
#                             bench/bench_triton_gpu.py times beside fastmuon
#   bench/.anchors/SOURCE     where muon.py came from (repository commit or package version)
#   bench/.anchors/wheels/    scipy-openblas32 and nanobind wheels for CPython 3.12 on x86-64
#                             Linux: what building fastmuon's C++ extension needs beyond a CUDA
#                             machine's usual Python packages (about 8 MB)
#
#   bash bench/fetch_gpu_anchors.sh [--git-dir DIR]
#
# muon.py is taken from the first source that works: DIR (a git directory or clone of
# KellerJordan/Muon, e.g. a mirror fetched earlier), a shallow clone from GitHub, then Keller
# Jordan's own PyPI release of the file (muon-optimizer 0.1.0, an older version of the same
# muon.py). Run it from the repository root, where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1

ANCHORS=bench/.anchors
PYTHON=${PYTHON:-python3}
GIT_DIR_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --git-dir) GIT_DIR_ARG="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$ANCHORS/wheels"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetched=""
if [ -n "$GIT_DIR_ARG" ] && git --git-dir="$GIT_DIR_ARG" show HEAD:muon.py >"$tmp/muon.py" 2>/dev/null; then
  fetched="KellerJordan/Muon at $(git --git-dir="$GIT_DIR_ARG" rev-parse HEAD) (from $GIT_DIR_ARG)"
elif timeout 60 git clone -q --depth 1 https://github.com/KellerJordan/Muon "$tmp/Muon" 2>/dev/null; then
  cp "$tmp/Muon/muon.py" "$tmp/muon.py"
  fetched="KellerJordan/Muon at $(git -C "$tmp/Muon" rev-parse HEAD)"
elif timeout 120 "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$tmp/pypi" muon-optimizer==0.1.0 \
    && unzip -q -o "$tmp"/pypi/muon_optimizer-*.whl muon.py -d "$tmp"; then
  fetched="muon-optimizer 0.1.0 on PyPI (Keller Jordan's release of muon.py)"
fi
if [ -n "$fetched" ] && grep -q "class SingleDeviceMuon" "$tmp/muon.py"; then
  cp "$tmp/muon.py" "$ANCHORS/muon.py"
  echo "$fetched" >"$ANCHORS/SOURCE"
  echo "muon.py: $fetched"
else
  echo "muon.py: not fetched (no source reachable); the benchmark will record Keller's Muon as not available" >&2
fi

# The versions the package's build asks for (pyproject.toml), as wheels for the GPU machine's
# CPython 3.12 (pip matches each manylinux tag exactly, hence the list).
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
rm -f "$ANCHORS"/wheels/*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$ANCHORS/wheels" "scipy-openblas32>=0.3.29,<0.4" "nanobind==3.1.0"
ls -l "$ANCHORS/wheels"
du -sh "$ANCHORS"
