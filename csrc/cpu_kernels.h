// fastmuon/csrc/cpu_kernels.h: pointer-level CPU kernels shared by the
// `fastmuon._blas` (numpy / torch) and `fastmuon._mlx_ext` (MLX) modules.
//
// Nothing here knows about Python, nanobind or MLX, so both modules link the
// same static library and there is one implementation of each kernel.
#pragma once

#include <cstdint>

namespace fastmuon::cpu {

// out[b] = x[b] @ x[b]^T for every b in [0, batch).
//
// x is a row-major C-contiguous (batch, m, k) float32 buffer and out a
// row-major C-contiguous (batch, m, m) float32 buffer; they must not overlap.
// The product is formed once with BLAS ssyrk (upper triangle) and mirrored,
// so both triangles of every out[b] are written and out[b] is exactly
// symmetric. k == 0 writes zeros. Throws std::invalid_argument for negative
// sizes or for m, k beyond the BLAS integer range. Thread-safe; runs on the
// BLAS thread pool.
void xxt_f32(const float* x, float* out, int64_t batch, int64_t m, int64_t k);

// Copy the strict upper triangle of the row-major (m, m) matrix c onto its
// strict lower triangle (cache-blocked transpose).
void mirror_upper_to_lower(float* c, int64_t m);

// Threads used by the BLAS. 0 means the BLAS manages its threads itself
// (Accelerate), in which case set_blas_num_threads is a no-op.
int blas_num_threads();
// Throws std::invalid_argument if n < 1.
void set_blas_num_threads(int n);

// Human-readable name of the linked BLAS ("OpenBLAS" or "Accelerate").
const char* blas_name();

} // namespace fastmuon::cpu
