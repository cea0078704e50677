"""The backends of ``fastmuon.mlx.orthogonalize``, each a driver of its own: ``reference``
(plain mlx), ``native`` (the C++ primitives on the BLAS, CPU) and ``metal_backend`` (Apple GPU;
its ``mx.fast.metal_kernel`` kernels in ``metal_kernels``). ``fastmuon.mlx.orthogonalize``
chooses among them (its registry ``AUTO_CANDIDATES``)."""
