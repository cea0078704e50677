"""The backends of ``fastmuon.torch.orthogonalize``, each a driver of its own: ``reference``
(plain torch; cuBLAS on CUDA), ``native`` (the C++ kernels on the BLAS, CPU) and
``triton_backend`` (CUDA; its kernels in ``triton_common``, ``triton_xxt``, ``triton_xtx`` and
``triton_ba_plus_caa``; imported on first use). ``fastmuon.torch.orthogonalize`` chooses
among them (its registry ``AUTO_CANDIDATES``)."""
