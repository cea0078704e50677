// fastmuon/csrc/cpu_kernels.h: pointer-level CPU kernels shared by the
// `fastmuon._blas` (numpy / torch) and `fastmuon._mlx_ext` (MLX) modules.
//
// Nothing here knows about Python, nanobind or MLX, so both modules link the
// same static library and there is one implementation of each kernel.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "iteration.h"

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

// out[b] = alpha * a[b] @ a[b] + beta * a[b] for symmetric (m, m) matrices a[b]
// (a a = a a^T, so one ssyrk with beta forms it at half the flops of a matmul),
// mirrored so that out[b] is exactly symmetric. a and out are row-major
// C-contiguous (batch, m, m) float32 buffers; out may equal a (in place) but
// must not partially overlap it. Only the upper triangle of a is read (a
// symmetrized scratch copy is the ssyrk operand). Throws
// std::invalid_argument for negative sizes or m beyond the BLAS integer range.
void ba_plus_caa_f32(const float* a, float* out, int64_t batch, int64_t m,
                     float alpha, float beta);

// In place: x[b] <- the plan's orthogonalization of x[b], for row-major
// C-contiguous (batch, rows, cols) float32 x. Tall matrices (rows > cols) are
// iterated in the wide orientation without a transposed copy (X^T X and
// X B products). The iteration is fastmuon::iterate (iteration.h) on BLAS
// operations. With workers == 1 the matrices run one after another, each
// BLAS call on the BLAS thread pool; with workers > 1 they are shared out
// over that many threads (parallel.h; at most one per matrix), so the caller
// should have set the BLAS to one thread. Every matrix gets the same
// operations wherever it runs, so the result does not depend on workers.
// A zero matrix stays zero. Throws std::invalid_argument for negative sizes,
// sizes beyond the BLAS integer range, workers < 1, or an invalid plan
// (check_plan).
void orthogonalize_f32(float* x, int64_t batch, int64_t rows, int64_t cols,
                       const OrthogonalizePlan& plan, int workers = 1);

// One (batch, rows, cols) row-major C-contiguous float32 buffer.
struct Stack {
  float* data;
  int64_t batch, rows, cols;
};

// orthogonalize_f32 on several stacks (of any shapes; the buffers must not
// overlap) in one call: all their matrices are shared out over the workers
// together, the largest first, each to the least loaded thread.
void orthogonalize_stacks_f32(const std::vector<Stack>& stacks,
                              const OrthogonalizePlan& plan, int workers = 1);

// The shape of one matrix for orthogonalize_each_f32.
struct MatrixShape {
  int64_t rows, cols;
};

// For every matrix i of `shapes`: prepare(i, u) writes its input into u, a
// row-major (rows, cols) float32 scratch buffer; u is orthogonalized in place
// (as in orthogonalize_stacks_f32); then finish(i, u) reads the result. The
// matrices are shared out over `workers` threads as in
// orthogonalize_stacks_f32, so prepare and finish run concurrently for
// different i. Matrices with no entries are skipped. Throws
// std::invalid_argument (its message naming `op`) for sizes beyond the BLAS
// integer range, workers < 1, or an invalid plan.
void orthogonalize_each_f32(
    const std::vector<MatrixShape>& shapes, const OrthogonalizePlan& plan,
    int workers, const std::function<void(size_t, float*)>& prepare,
    const std::function<void(size_t, float*)>& finish, const char* op);

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
