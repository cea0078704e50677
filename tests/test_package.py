"""Import hygiene: each entry point pulls in only its own framework."""

import os
import subprocess
import sys

import pytest


def imported_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_import_fastmuon_needs_no_framework():
    modules = imported_after("import fastmuon, fastmuon.coefficients")
    assert not modules & {"torch", "mlx", "triton"}


def test_fastmuon_torch_imports_only_torch():
    pytest.importorskip("torch")
    modules = imported_after("import fastmuon.torch")
    assert "torch" in modules
    assert not modules & {"mlx", "triton"}


def test_fastmuon_mlx_imports_only_mlx():
    pytest.importorskip("mlx.core")
    modules = imported_after("import fastmuon.mlx")
    assert "mlx" in modules
    assert not modules & {"torch", "triton"}


def test_cli_without_command_prints_usage():
    out = subprocess.run([sys.executable, "-m", "fastmuon"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: python -m fastmuon" in out.stderr and "bench" in out.stderr


def test_cli_help_describes_each_command():
    out = subprocess.run([sys.executable, "-m", "fastmuon", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "bench" in out.stdout and "GPT-2-small block" in out.stdout and "make demo" in out.stdout


def _module_imports(package_dir):
    """{module: set of fastmuon modules it imports (anywhere in its body)} for a source tree."""
    import ast
    from pathlib import Path

    root = Path(package_dir)
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, ".".join(parts[:-1]))
    edges = {}
    for name, (path, package) in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                found.update(subs if len(subs) == len(node.names) else [base, *subs])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def _cycles(edges):
    state, stack, cycles = {}, [], []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in edges[u]:
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in edges:
        if u not in state:
            visit(u)
    return cycles


def test_no_import_cycles_inside_the_package(tmp_path):
    import fastmuon

    edges = _module_imports(os.path.dirname(fastmuon.__file__))
    assert "fastmuon.torch.orthogonalize" in edges and "fastmuon.mlx.optim.muon" in edges
    assert _cycles(edges) == []
    # the check can fail: a module importing back from one that imports it
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from .b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .a import g\n")
    assert _cycles(_module_imports(tmp_path / "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_torch_and_mlx_have_the_same_module_names():
    """fastmuon.torch and fastmuon.mlx mirror each other: the same modules, the same optim/ (but
    torch's DTensor owner strategy) and, but for each framework's own kernels, the same backends/."""
    import fastmuon

    root = os.path.dirname(fastmuon.__file__)
    kernel_files = {"triton_backend", "triton_common", "triton_xxt", "triton_xtx", "triton_ba_plus_caa",
                    "metal_backend", "metal_kernels"}

    def modules(*path):
        folder = os.path.join(root, *path)
        return {f[:-3] if f.endswith(".py") else f + "/" for f in os.listdir(folder)
                if f.endswith(".py") or os.path.isfile(os.path.join(folder, f, "__init__.py"))}

    assert modules("torch") == modules("mlx")
    assert {"optim/", "backends/"} <= modules("torch")
    # owners.py steps DTensor shardings (one Shard placement); MLX arrays are never sharded
    assert modules("torch", "optim") - {"owners"} == modules("mlx", "optim")
    assert modules("torch", "backends") - kernel_files == modules("mlx", "backends") - kernel_files
    assert not any(len(open(os.path.join(folder, f)).readlines()) > 500
                   for folder, _, files in os.walk(root) for f in files if f.endswith(".py")), "a module over 500 lines"
