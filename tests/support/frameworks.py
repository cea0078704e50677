"""One adaptor per framework so that each orthogonalization test runs unchanged on both."""

from __future__ import annotations

import numpy as np
import pytest


class TorchFramework:
    name = "torch"

    def __init__(self):
        self.torch = pytest.importorskip("torch")
        from fastmuon.torch import orthogonalize

        self.orthogonalize = orthogonalize

    def dtype(self, name: str):
        return getattr(self.torch, name)

    def array(self, values: np.ndarray, dtype: str):
        return self.torch.tensor(np.asarray(values, dtype=np.float64)).to(self.dtype(dtype))

    def to_numpy(self, t) -> np.ndarray:
        return t.detach().to(self.torch.float64).cpu().numpy()

    def dtype_name(self, t) -> str:
        return str(t.dtype).removeprefix("torch.")

    def transpose(self, t):
        return t.mT


class MlxFramework:
    name = "mlx"

    def __init__(self):
        self.mx = pytest.importorskip("mlx.core")
        from fastmuon.mlx import orthogonalize

        self.orthogonalize = orthogonalize

    def dtype(self, name: str):
        return getattr(self.mx, name)

    def array(self, values: np.ndarray, dtype: str):
        return self.mx.array(np.asarray(values, dtype=np.float64), dtype=self.mx.float64).astype(
            self.dtype(dtype)
        )

    def to_numpy(self, a) -> np.ndarray:
        return np.array(a.astype(self.mx.float64))

    def dtype_name(self, a) -> str:
        return str(a.dtype).removeprefix("mlx.core.")

    def transpose(self, a):
        return a.swapaxes(-1, -2)


FRAMEWORKS = {"torch": TorchFramework, "mlx": MlxFramework}
