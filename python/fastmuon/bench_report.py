"""What the benchmarks print and record: the machine and versions, the result tables, a progress
count on stderr and JSON lines. ``fastmuon.bench`` measures; this module only shows."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, TextIO

from . import cpu


def environment() -> Dict[str, Any]:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "system": platform.system(),
        "processor": _cpu_model(),
        "cpu": cpu.cpu_identity(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_bf16_units": cpu.has_fast_bf16_matmul(),
    }
    for package in ("fastmuon", "numpy", "torch", "mlx"):
        try:
            from importlib.metadata import version

            env[package] = version(package)
        except Exception:  # not installed
            env[package] = None
    env["fastmuon_source"] = os.path.dirname(os.path.abspath(__file__))
    _warn_if_not_this_tree(env["fastmuon_source"])
    return env


def _warn_if_not_this_tree(source: str) -> None:
    """A script of a source tree's bench/ measures the installed fastmuon (bench/README.md): say
    so when that copy's Python files differ from the tree's python/fastmuon (``make install``
    since an edit, or ``PYTHONPATH=python``, measures the tree)."""
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    tree = os.path.join(os.path.dirname(script_dir), "python", "fastmuon")
    if os.path.basename(script_dir) != "bench" or not os.path.isdir(tree) or \
            os.path.realpath(tree) == os.path.realpath(source):
        return
    import filecmp

    for root, _, files in os.walk(tree):
        for name in files:
            if name.endswith(".py"):
                mine = os.path.join(root, name)
                installed = os.path.join(source, os.path.relpath(mine, tree))
                if not (os.path.exists(installed) and filecmp.cmp(mine, installed, shallow=False)):
                    print(f"note: the fastmuon measured ({source}) differs from this tree's {tree} "
                          f"({os.path.relpath(mine, tree)}): run make install, or PYTHONPATH=python",
                          file=sys.stderr)
                    return


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_line(env: Dict[str, Any], sgemm: Optional[float]) -> str:
    """The processor, its bf16 matrix units and its fp32 GEMM rate (when torch measured one)."""
    units = ", ".join(flag for flag in cpu.BF16_FLAGS if flag in cpu.cpu_flags()) or "none"
    line = f"{env['processor']}, {env['cores']} cores; bf16 units: {units}"
    return line + (f"; fp32 sgemm here: {sgemm:.0f} GFLOP/s" if sgemm else "")


def dtype_name(dtype) -> str:
    """'fp32', 'bf16', ... for a torch or mlx dtype."""
    name = str(dtype).rsplit(".", 1)[-1]
    return {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def compute_dtype_line(rows: List[Dict[str, Any]]) -> str:
    """The compute dtype each provider ran in (rows' 'dtype'), with the methods that differ from
    its usual one: the default differs between frameworks (torch takes bf16 on CPUs with bf16
    units, MLX stays fp32 on the CPU), backends (native is fp32) and methods (gram widens)."""
    by_provider: Dict[str, Dict[str, set]] = {}
    for r in rows:
        by_provider.setdefault(r["provider"], {}).setdefault(r["method"], set()).add(r.get("dtype") or "?")
    parts = []
    for provider, methods in by_provider.items():
        named = {method: "/".join(sorted(dtypes)) for method, dtypes in methods.items()}
        usual = Counter(named.values()).most_common(1)[0][0]
        others = ", ".join(f"{method} {dtype}" for method, dtype in named.items() if dtype != usual)
        parts.append(f"{provider} {usual}" + (f" ({others})" if others else ""))
    return "compute dtype: " + ", ".join(parts)


def shape_name(shape) -> str:
    """(768, 3072) -> '768x3072'."""
    return "x".join(str(s) for s in shape)


def _common_cells(row: Dict[str, Any], peak: Optional[float], ratio_key: str, ratio_width: int):
    """The shape, 'vs sgemm' and ratio cells of a result row. 'vs sgemm' is the dense-equivalent
    rate over the fp32 sgemm rate: above 1 where a path does less work than a dense fp32
    product (symmetric kernels compute half of X X^T; bf16 runs faster than fp32)."""
    shape = shape_name(row["shape"])
    pct = f"{row['gflops'] / peak:6.2f}" if peak else f"{'-':>6s}"
    ratio = f"{row[ratio_key]:{ratio_width}.2f}" if row.get(ratio_key) else "-".rjust(ratio_width)
    return shape, pct, ratio


def format_table(rows: List[Dict[str, Any]], peak: Optional[float] = None) -> str:
    """One line per row; 'GF dense' / 'GF issued' are the preset's own work (iteration_flops),
    in GFLOP per call: every product in full, and as issued with the symmetric kernels."""
    head = f"{'provider':20s} {'method':14s} {'shape':>10s} {'dtype':>5s} {'time s':>8s} {'GFLOP/s':>8s}"
    head += f" {'vs sgemm':>6s} {'vs base':>8s} {'GF dense':>8s} {'GF issued':>9s} {'polar_err':>9s} {'orth_err':>8s}"
    lines = [head]
    for r in rows:
        shape, pct, ratio = _common_cells(r, peak, "vs_baseline", 8)
        method = f"{r['method']} {r.get('steps', 5)}"
        dense, issued = r.get("flops_dense"), r.get("flops_issued")
        work = f"{dense / 1e9:8.2f} {issued / 1e9:9.2f}" if dense is not None else f"{'-':>8s} {'-':>9s}"
        lines.append(
            f"{r['provider']:20s} {method:14s} {shape:>10s} {r.get('dtype') or '-':>5s} {r['seconds']:8.3f} "
            f"{r['gflops']:8.1f} {pct} {ratio} {work} {r['polar_err']:9.4f} {r['orth_err']:8.4f}"
        )
    return "\n".join(lines)


def format_totals(totals: List[Dict[str, Any]]) -> str:
    lines = [f"{'provider':20s} {'method':14s} {'block s':>8s} {'vs base':>8s} {'polar_err':>9s}"]
    for t in totals:
        ratio = f"{t['vs_baseline']:8.2f}" if t.get("vs_baseline") else f"{'-':>8s}"
        lines.append(f"{t['provider']:20s} {t['method']:14s} {t['seconds']:8.3f} {ratio} {t['polar_err']:9.4f}")
    return "\n".join(lines)


def format_op_table(rows: List[Dict[str, Any]], peak: Optional[float] = None) -> str:
    lines = [f"{'op':12s} {'provider':16s} {'shape':>10s} {'time ms':>9s} {'GFLOP/s':>8s} {'vs sgemm':>6s} {'vs matmul':>9s} {'rel err':>9s}"]
    for r in rows:
        shape, pct, ratio = _common_cells(r, peak, "vs_matmul", 9)
        lines.append(
            f"{r['op']:12s} {r['provider']:16s} {shape:>10s} {1e3 * r['seconds']:9.2f} {r['gflops']:8.1f} {pct} {ratio} {r['rel_err']:9.2e}"
        )
    return "\n".join(lines)


def append_results(path: str, rows: List[Dict[str, Any]], env: Dict[str, Any]) -> None:
    """Append one JSON line per row, each carrying the environment of the run."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**env, **r}) + "\n")


class Progress:
    """Finished steps out of the planned ones, on stderr: at most one line every ``every``
    seconds (rewritten in place on a terminal, where the default is 1 s; 10 s elsewhere, so that
    a log stays short) and a last one at ``close``. Plain prints, so that progress shows whatever
    optional packages are installed; nothing at all when not ``enabled``."""

    def __init__(self, total: int, enabled: bool = True, unit: str = "case", label: str = "",
                 every: Optional[float] = None, stream: Optional[TextIO] = None):
        self.total, self.done, self.enabled, self.unit = total, 0, enabled, unit
        self.prefix = f"{label}: " if label else ""
        self.stream = sys.stderr if stream is None else stream
        self.in_place = self.stream.isatty()
        self.every = every if every is not None else (1.0 if self.in_place else 10.0)
        self.start = self.last = time.perf_counter()
        self.doing = ""

    def update(self, n: int = 1, doing: Optional[str] = None) -> None:
        """``n`` more steps done; ``doing`` (shown after the count) says what runs next."""
        self.done += n
        self.doing = self.doing if doing is None else doing
        if time.perf_counter() - self.last >= self.every:
            self._show()

    def skip(self, n: int) -> None:
        """``n`` planned steps will not run after all."""
        self.total -= n

    def close(self) -> None:
        self.doing = ""
        self._show(end="\n" if self.in_place else "")

    def _show(self, end: str = "") -> None:
        if not self.enabled:
            return
        self.last = time.perf_counter()
        line = f"{self.prefix}{self.done}/{self.total} {self.unit}s, {self.last - self.start:.0f} s"
        line += f"; {self.doing}" if self.doing else ""
        if self.in_place:
            self.stream.write(f"\r{line:<79s}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def progress_bar(total: int, enabled: bool, unit: str = "case") -> Progress:
    """The progress count the demo (bench/demo/run.py) and the benchmarks show."""
    return Progress(total, enabled, unit)
