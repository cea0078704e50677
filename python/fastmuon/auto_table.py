"""Where ``backend="auto"`` takes the Triton kernels on CUDA: a table of measurements.

"auto" orthogonalizes a CUDA tensor with the cuBLAS reference unless ``TRITON_FASTER`` records
that the Triton iteration was measured faster on that GPU (its name as torch reports it), compute
dtype and shape bucket. The table is empty: no GPU run has yet measured a shape where the
Triton iteration wins (on an H100, 2026-11-22, it was 1.5-3x slower than cuBLAS at GPT-2 sizes
and level at 4096 x 4096; on an H200, 2026-12-04, 1.2x slower at 4096 x 4096 and 3-5x at GPT-2
sizes, where its launches cost ~0.15-0.3 ms each). ``bench/bench_triton_gpu.py`` prints the entries its measurements
support (``entries_from_rows``, ``format_entries``), to be pasted here with the run's rows
committed beside them.

A bucket is (batch, m, n) of the wide orientation (m <= n), each rounded up to a power of two, so
shapes within a factor of two share an entry; an entry stands only if every measured shape in its
bucket was faster with Triton. Plain data and pure functions (neither torch nor triton):
``fastmuon.torch``'s ``select_backend`` reads it.
"""

from __future__ import annotations

import pprint
from collections import defaultdict
from typing import Any, Dict, Iterable, Tuple

# (gpu name, compute dtype name, shape bucket) -> the measurement behind the entry.
TRITON_FASTER: Dict[Tuple[str, str, Tuple[int, int, int]], Dict[str, Any]] = {}

# Triton must beat the reference by this factor in every measured shape of a bucket (timings of
# one version repeat within a few percent on a quiet GPU).
MARGIN = 0.97


def _power_of_two_at_least(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def shape_bucket(batch: int, m: int, n: int) -> Tuple[int, int, int]:
    """(batch, rows, cols) of the wide orientation, each rounded up to a power of two."""
    rows, cols = sorted((m, n))
    return tuple(_power_of_two_at_least(v) for v in (batch, rows, cols))


def triton_measured_faster(gpu: str, dtype: str, batch: int, m: int, n: int, table=None) -> bool:
    """Whether ``table`` (default ``TRITON_FASTER``) records Triton faster for this GPU, dtype
    name (``"bfloat16"``) and shape."""
    table = TRITON_FASTER if table is None else table
    return (gpu, dtype, shape_bucket(batch, m, n)) in table


def entries_from_rows(rows: Iterable[Dict[str, Any]], margin: float = MARGIN) -> Dict[tuple, Dict[str, Any]]:
    """The table entries that benchmark rows support: rows of op "orthogonalize" with providers
    "triton" and "reference" (fields gpu, dtype, batch, m, n, ms, date), paired by shape. A bucket
    enters when every shape measured in it has triton ms <= margin x reference ms."""
    times: Dict[tuple, Dict[str, Any]] = defaultdict(dict)
    for row in rows:
        if row.get("op") == "orthogonalize" and row.get("provider") in ("triton", "reference"):
            shape = (row["batch"], *sorted((row["m"], row["n"])))
            times[(row["gpu"], row["dtype"], shape)][row["provider"]] = (row["ms"], row.get("date"))
    buckets: Dict[tuple, list] = defaultdict(list)
    for (gpu, dtype, shape), by_provider in times.items():
        if len(by_provider) == 2:
            buckets[(gpu, dtype, shape_bucket(*shape))].append((shape, by_provider))
    entries = {}
    for key, measured in sorted(buckets.items()):
        if all(p["triton"][0] <= margin * p["reference"][0] for _, p in measured):
            entries[key] = dict(
                shapes=[list(shape) for shape, _ in measured],
                triton_ms=[round(p["triton"][0], 4) for _, p in measured],
                reference_ms=[round(p["reference"][0], 4) for _, p in measured],
                date=max(str(p["triton"][1]) for _, p in measured),
            )
    return entries


def format_entries(entries: Dict[tuple, Dict[str, Any]]) -> str:
    """``entries`` as the Python assignment to paste over ``TRITON_FASTER`` above."""
    if not entries:
        return "TRITON_FASTER: Dict[Tuple[str, str, Tuple[int, int, int]], Dict[str, Any]] = {}\n"
    body = pprint.pformat(entries, width=100, sort_dicts=True)
    return f"TRITON_FASTER: Dict[Tuple[str, str, Tuple[int, int, int]], Dict[str, Any]] = {body}\n"
