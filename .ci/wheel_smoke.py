#!/usr/bin/env python3
"""cibuildwheel's test-command: the installed wheel's extensions load and compute.

_blas must load (a NativeFallbackWarning is an error here); with torch installed, one
fastmuon.torch.Muon step runs on backend="native"; with mlx installed and importable (not in the
Linux build containers: their glibc is older than mlx's wheels need), _mlx_ext must load too.
"""

import importlib.util
import warnings

warnings.simplefilter("error", RuntimeWarning)

if importlib.util.find_spec("torch") is not None:
    import torch  # first: the extensions then share torch's libgomp (csrc/parallel.h)
else:
    torch = None
import fastmuon
import fastmuon.native as native

blas = native.blas_module()  # raises NativeExtensionMissing with the reason
print(f"fastmuon {fastmuon.__version__}: {blas.__file__} (OpenMP: {blas.openmp})")

if torch is not None:
    import fastmuon.torch as fmt

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 128))
    opt = fmt.Muon([w], lr=0.02, backend="native")
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    assert bool((w.detach() != before).any()) and bool(torch.isfinite(w).all())
    print("fastmuon.torch.Muon step on backend='native': ok")

try:
    import mlx.core  # noqa: F401
except ImportError:
    print("mlx not importable here: _mlx_ext not checked")
else:
    ext = native.mlx_ext_module()
    print(f"_mlx_ext: {ext.__file__}")
