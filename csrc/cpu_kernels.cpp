// fastmuon/csrc/cpu_kernels.cpp: see cpu_kernels.h.
#include "cpu_kernels.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "blas.h"

namespace fastmuon::cpu {

namespace {

void check_blas_dim(int64_t v, const char* what) {
  if (v < 0) {
    throw std::invalid_argument(
        std::string("[fastmuon.xxt] ") + what +
        " must be non-negative, got " + std::to_string(v));
  }
  if (v > static_cast<int64_t>(std::numeric_limits<fm_blasint>::max())) {
    throw std::invalid_argument(
        std::string("[fastmuon.xxt] ") + what + " = " + std::to_string(v) +
        " exceeds the BLAS integer range");
  }
}

} // namespace

void mirror_upper_to_lower(float* c, int64_t m) {
  // Blocked so that both the rows read (c[j, i0:i1]) and the rows written
  // (c[i, j0:j1]) stay in cache; a naive column walk thrashes for m >= 1024.
  constexpr int64_t kBlock = 64;
  for (int64_t i0 = 0; i0 < m; i0 += kBlock) {
    const int64_t i1 = std::min(i0 + kBlock, m);
    for (int64_t j0 = 0; j0 <= i0; j0 += kBlock) {
      const int64_t j1 = std::min(j0 + kBlock, m);
      for (int64_t i = i0; i < i1; ++i) {
        float* row = c + i * m;
        const int64_t jend = std::min(j1, i);
        for (int64_t j = j0; j < jend; ++j) {
          row[j] = c[j * m + i];
        }
      }
    }
  }
}

void xxt_f32(const float* x, float* out, int64_t batch, int64_t m, int64_t k) {
  if (batch < 0) {
    throw std::invalid_argument(
        "[fastmuon.xxt] batch must be non-negative, got " +
        std::to_string(batch));
  }
  check_blas_dim(m, "m (rows of x)");
  check_blas_dim(k, "k (columns of x)");
  if (batch == 0 || m == 0) {
    return;
  }
  const int64_t x_stride = m * k;
  const int64_t c_stride = m * m;
  if (k == 0) {
    std::memset(out, 0, sizeof(float) * static_cast<size_t>(batch * c_stride));
    return;
  }
  const auto mb = static_cast<fm_blasint>(m);
  const auto kb = static_cast<fm_blasint>(k);
  for (int64_t b = 0; b < batch; ++b) {
    float* c = out + b * c_stride;
    // Row-major C = alpha * A A^T + beta * C, A = x[b] (m x k, lda = k).
    // beta = 0 makes the BLAS overwrite C (no read of the old contents).
    FM_CBLAS(ssyrk)(
        CblasRowMajor,
        CblasUpper,
        CblasNoTrans,
        mb,
        kb,
        1.0f,
        x + b * x_stride,
        kb,
        0.0f,
        c,
        mb);
    mirror_upper_to_lower(c, m);
  }
}

int blas_num_threads() {
#if defined(FASTMUON_BLAS_ACCELERATE)
  return 0;
#else
  return FM_OPENBLAS(get_num_threads)();
#endif
}

void set_blas_num_threads(int n) {
  if (n < 1) {
    throw std::invalid_argument(
        "[fastmuon.set_num_threads] n must be >= 1, got " + std::to_string(n));
  }
#if !defined(FASTMUON_BLAS_ACCELERATE)
  FM_OPENBLAS(set_num_threads)(n);
#endif
}

const char* blas_name() {
  return FASTMUON_BLAS_NAME;
}

} // namespace fastmuon::cpu
