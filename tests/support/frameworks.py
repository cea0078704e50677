"""One adaptor per framework so that each orthogonalization test runs unchanged on both."""

from __future__ import annotations

import importlib

import numpy as np
import pytest


class Framework:
    """A framework module (``lib``, skipped when missing) and its ``fastmuon`` subpackage's
    ``orthogonalize``; subclasses say how arrays go in and out."""

    name: str
    module: str

    def __init__(self):
        self.lib = pytest.importorskip(self.module)
        self.orthogonalize = importlib.import_module(f"fastmuon.{self.name}").orthogonalize

    def dtype(self, name: str):
        return getattr(self.lib, name)


class TorchFramework(Framework):
    name, module = "torch", "torch"

    def array(self, values: np.ndarray, dtype: str):
        return self.lib.tensor(np.asarray(values, dtype=np.float64)).to(self.dtype(dtype))

    def to_numpy(self, t) -> np.ndarray:
        return t.detach().to(self.lib.float64).cpu().numpy()

    def dtype_name(self, t) -> str:
        return str(t.dtype).removeprefix("torch.")

    def transpose(self, t):
        return t.mT


class MlxFramework(Framework):
    name, module = "mlx", "mlx.core"

    def array(self, values: np.ndarray, dtype: str):
        values = self.lib.array(np.asarray(values, dtype=np.float64), dtype=self.lib.float64)
        return values.astype(self.dtype(dtype))

    def to_numpy(self, a) -> np.ndarray:
        return np.array(a.astype(self.lib.float64))

    def dtype_name(self, a) -> str:
        return str(a.dtype).removeprefix("mlx.core.")

    def transpose(self, a):
        return a.swapaxes(-1, -2)


FRAMEWORKS = {"torch": TorchFramework, "mlx": MlxFramework}
