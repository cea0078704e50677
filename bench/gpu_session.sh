#!/usr/bin/env bash
# One GPU session in one command, at most about 9 minutes: install fastmuon, run the Triton tests
# on the GPU, run the GPU benchmark; logs and result rows go to $OUT.
#
# Made for a bare x86-64 Linux machine with an NVIDIA GPU and no network, whose python3 already
# has CUDA torch and triton (the CUDA torch wheel and the NVIDIA runtime wheels it needs come to
# gigabytes, so they cannot travel with the repository; a project that must bring them needs a
# machine image that has them). Everything else comes from the working tree and bench/.anchors/,
# which bench/fetch_gpu_anchors.sh fills beforehand where the network is:
#
#   bash bench/fetch_gpu_anchors.sh     # here: Keller Jordan's muon.py + two build wheels (~8 MB)
#   bash bench/gpu_session.sh           # there, from the repository root, bench/.anchors carried
#
# Phases, each cut off at a deadline counted from the start (SESSION_SECONDS, default 530):
#   env      nvidia-smi, python3, torch, triton, CPU count
#   install  pip install --no-build-isolation of this tree (the C++ BLAS extension; MLX off) and
#            the carried wheels into a private folder on PYTHONPATH. If that fails the source tree
#            is used instead (the Triton path is pure Python; "auto" then skips the CPU kernels)
#   test     pytest tests/test_triton.py tests/test_auto_table.py on the GPU (xdist when present)
#   profile  bench/profile_gpu_step.py: where the eager step's time goes against torch.optim.Muon
#            (at most 100 s; its tables go to bench.log, its rows to triton_gpu.jsonl)
#   bench    bench/bench_triton_gpu.py with the time left (rows appended as they are measured)
# PHASES="env install test profile bench" selects phases; PYTHON picks the interpreter (default python3).
#
# Files in $OUT (default bench/out/gpu_session), at most 8: session.log (everything), env.txt,
# install.log, pytest.log, bench.log, triton_gpu.jsonl (the rows, for bench/results/), and
# auto_table.txt (the fastmuon.auto_table entries the rows support).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-python3}
OUT=${OUT:-bench/out/gpu_session}
SESSION_SECONDS=${SESSION_SECONDS:-530}
PHASES=${PHASES:-env install test profile bench}
SITE=${SITE:-${TMPDIR:-/tmp}/fastmuon-gpu-site}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
tee_pid=$!
SECONDS=0

left() { echo $((SESSION_SECONDS - SECONDS)); }
wants() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
phase() { echo; echo "=== $1 (t=${SECONDS}s, $(left)s left)"; }
# run_for SECONDS LOG CMD...: CMD, killed after SECONDS (and never past the session's deadline)
run_for() {
  local limit=$1 log=$2
  shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  if [ "$limit" -le 5 ]; then
    echo "no time left for: $*"
    return 124
  fi
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}

if wants env; then
  phase env
  {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    echo "cpus: $(nproc)"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
    ls -l bench/.anchors bench/.anchors/wheels 2>&1
    cat bench/.anchors/SOURCE 2>&1
  } | tee "$OUT/env.txt"
fi

export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if wants install; then
  phase install
  rm -rf "$SITE" && mkdir -p "$SITE"
  installed=0
  if ls bench/.anchors/wheels/*.whl >/dev/null 2>&1 \
    && run_for 60 "$OUT/install.log" "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
      bench/.anchors/wheels/*.whl \
    && run_for 150 "$OUT/install.log" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
      --target "$SITE" -Ccmake.define.FASTMUON_BUILD_MLX=OFF . \
    && run_for 30 "$OUT/install.log" "$PY" -c 'import fastmuon, fastmuon._blas; print("installed", fastmuon.__file__)'; then
    installed=1
  fi
  if [ "$installed" = 0 ]; then
    echo "install failed (install.log): using the source tree, without the C++ extension"
    export PYTHONPATH="$PWD/python:$PYTHONPATH"
  fi
else
  export PYTHONPATH="$PWD/python:$PYTHONPATH"
fi
"$PY" -c 'import fastmuon; print("fastmuon from", fastmuon.__file__)'

if wants test; then
  phase test
  parallel=()
  "$PY" -c 'import xdist' 2>/dev/null && parallel=(-n 8)
  per_test=()
  "$PY" -c 'import pytest_timeout' 2>/dev/null && per_test=(--timeout 150)
  # leave the benchmark, when it runs, at least 240 s, and the profile its 100 s
  reserve=0
  wants bench && reserve=240
  wants profile && reserve=$((reserve + 100))
  budget=$(($(left) - reserve))
  [ "$budget" -gt 200 ] && budget=200
  run_for "$budget" "$OUT/pytest.log" "$PY" -m pytest -q -p no:cacheprovider -rfEs "${parallel[@]}" "${per_test[@]}" \
    tests/test_triton.py tests/test_auto_table.py
  echo "pytest exit status: $?"
fi

if wants profile; then
  phase profile
  run_for 100 "$OUT/bench.log" "$PY" bench/profile_gpu_step.py --out "$OUT/triton_gpu.jsonl"
  echo "profile exit status: $?"
fi

if wants bench; then
  phase bench
  # the benchmark stops starting measurements 40 s before its own hard limit
  limit=$(($(left) - 5))
  run_for "$limit" "$OUT/bench.log" "$PY" bench/bench_triton_gpu.py --out "$OUT/triton_gpu.jsonl" \
    --auto-table "$OUT/auto_table.txt" --budget $((limit - 40)) --compile --autotune
  echo "benchmark exit status: $?"
fi

phase finished
ls -l "$OUT"
exec 1>&- 2>&-
wait "$tee_pid" 2>/dev/null  # session.log complete before the machine collects $OUT
exit 0
