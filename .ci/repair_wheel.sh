#!/usr/bin/env bash
# Repair a Linux wheel into a manylinux one: .ci/repair_wheel.sh <wheel> <dest_dir>
# (cibuildwheel's repair-wheel-command and `make wheel`). auditwheel must be on PATH or importable.
#
# Three libraries are left out of the wheel on purpose (--exclude), each provided at run time by
# something else, so auditwheel only records them as needed:
#   libmlx.so             the mlx package's own (RPATH $ORIGIN/../mlx/lib). libmlx has no versioned
#                         soname and no stable ABI, and fastmuon._mlx_ext shares mlx.core's nanobind
#                         types: a second copy would break both. Pinned exactly: fastmuon[mlx].
#   libscipy_openblas.so  the scipy-openblas32 dependency's (RPATH $ORIGIN/../scipy_openblas32/lib);
#                         bundling it would add ~30 MB for a library pip installs anyway.
#   libgomp.so.1          torch's CPU wheel ships torch/lib/libgomp.so.1 (same soname); with torch
#                         imported the loader binds ours to it, so our OpenMP tasks run on torch's
#                         threads (csrc/parallel.h: a private pool ran 1.8x slower). auditwheel
#                         would rename a bundled copy (libgomp-<hash>.so), i.e. a second runtime.
#                         Without torch, the system's libgomp1 serves; where there is none, the
#                         extensions fail to load and fastmuon.native falls back to the reference
#                         path with a warning that says to install libgomp1 or import torch first.
# Excluded libraries need not be found: this repair does not set LD_LIBRARY_PATH to the
# scipy-openblas32 and mlx lib folders, because a located library that is not excluded is vendored
# (measured: LD_LIBRARY_PATH alone put a 25 MB libscipy_openblas and libgomp into fastmuon.libs/).
set -euo pipefail
wheel=$1
dest=$2
auditwheel="${AUDITWHEEL:-auditwheel}"  # a command line: `make wheel` runs it from a --target folder
$auditwheel repair \
  --exclude libmlx.so \
  --exclude libscipy_openblas.so \
  --exclude libgomp.so.1 \
  -w "$dest" "$wheel"
