// fastmuon/csrc/blas.h: the one place that knows how the BLAS is spelled.
//
// Kernel code calls FM_CBLAS(ssyrk)(...) and reads like plain CBLAS. Two
// back-ends are supported:
//
//   * scipy-openblas32 (Linux wheels). Every exported symbol carries the
//     prefix given by BLAS_SYMBOL_PREFIX (CMake passes `scipy_`, matching the
//     `Cflags` of its pkg-config file), e.g. `scipy_cblas_ssyrk`. The prefix
//     keeps our BLAS apart from the reference BLAS bundled inside libmlx.
//   * Apple Accelerate (macOS), selected by FASTMUON_BLAS_ACCELERATE.
#pragma once

#define FM_CAT_IMPL(a, b) a##b
#define FM_CAT(a, b) FM_CAT_IMPL(a, b)

#if defined(FASTMUON_BLAS_ACCELERATE)

#ifndef ACCELERATE_NEW_LAPACK
#define ACCELERATE_NEW_LAPACK
#endif
#include <Accelerate/Accelerate.h>

#define FM_CBLAS(name) FM_CAT(cblas_, name)
#define FASTMUON_BLAS_NAME "Accelerate"
using fm_blasint = __LAPACK_int;

#else // OpenBLAS-style CBLAS

#include <cblas.h>

#ifndef BLAS_SYMBOL_PREFIX
#define BLAS_SYMBOL_PREFIX
#endif
#define FM_CBLAS(name) FM_CAT(BLAS_SYMBOL_PREFIX, FM_CAT(cblas_, name))
#define FM_OPENBLAS(name) FM_CAT(BLAS_SYMBOL_PREFIX, FM_CAT(openblas_, name))
#define FASTMUON_BLAS_NAME "OpenBLAS"
using fm_blasint = blasint;

#endif
