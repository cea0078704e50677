// fastmuon/csrc/cpu_kernels.cpp: see cpu_kernels.h.
#include "cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "blas.h"

namespace fastmuon::cpu {

namespace {

// `op` names the public operation in messages, e.g. "xxt".
void check_blas_dim(int64_t v, const char* what, const char* op) {
  if (v < 0) {
    throw std::invalid_argument(
        std::string("[fastmuon.") + op + "] " + what +
        " must be non-negative, got " + std::to_string(v));
  }
  if (v > static_cast<int64_t>(std::numeric_limits<fm_blasint>::max())) {
    throw std::invalid_argument(
        std::string("[fastmuon.") + op + "] " + what + " = " +
        std::to_string(v) + " exceeds the BLAS integer range");
  }
}

void check_batch(int64_t batch, const char* op) {
  if (batch < 0) {
    throw std::invalid_argument(
        std::string("[fastmuon.") + op + "] batch must be non-negative, got " +
        std::to_string(batch));
  }
}

void copy_floats(float* dst, const float* src, int64_t n) {
  std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
}

// C = alpha * A A^T + beta * C on the upper triangle of the (m, m) matrix C,
// then mirrored. A is a full (m, k) row-major matrix with leading dimension
// k; with trans = true it is a (k, m) matrix with leading dimension m and
// C = alpha * A^T A + beta * C. beta == 0 never reads C.
void syrk_full(const float* a, float* c, int64_t m, int64_t k, float alpha,
               float beta, bool trans) {
  const auto mb = static_cast<fm_blasint>(m);
  const auto kb = static_cast<fm_blasint>(k);
  FM_CBLAS(ssyrk)(
      CblasRowMajor,
      CblasUpper,
      trans ? CblasTrans : CblasNoTrans,
      mb,
      kb,
      alpha,
      a,
      trans ? mb : kb,
      beta,
      c,
      mb);
  mirror_upper_to_lower(c, m);
}

// Row-major C = alpha * op(A) op(B) + beta * C with C (m, n) and inner size k;
// op(A) is (m, k), op(B) is (k, n), leading dimensions from the stored shapes.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const float* a, const float* b, float beta, float* c) {
  FM_CBLAS(sgemm)(
      CblasRowMajor,
      trans_a ? CblasTrans : CblasNoTrans,
      trans_b ? CblasTrans : CblasNoTrans,
      static_cast<fm_blasint>(m),
      static_cast<fm_blasint>(n),
      static_cast<fm_blasint>(k),
      alpha,
      a,
      static_cast<fm_blasint>(trans_a ? m : k),
      b,
      static_cast<fm_blasint>(trans_b ? k : n),
      beta,
      c,
      static_cast<fm_blasint>(n));
}

// C = alpha * A B + beta * C for square (m, m) matrices whose product is
// known to be symmetric (A and B commuting symmetric matrices, as every
// polynomial in the same Gram matrix is). OpenBLAS's sgemmt forms only the
// upper triangle, at half the flops of sgemm; it is then mirrored.
// Accelerate has no sgemmt, so there the full product is formed.
void symmetric_product(const float* a, const float* b, int64_t m, float alpha,
                       float beta, float* c) {
#if defined(FASTMUON_BLAS_ACCELERATE)
  gemm(false, false, m, m, m, alpha, a, b, beta, c);
#else
  const auto mb = static_cast<fm_blasint>(m);
  FM_CBLAS(sgemmt)(CblasRowMajor, CblasUpper, CblasNoTrans, CblasNoTrans, mb,
                   mb, alpha, a, mb, b, mb, beta, c, mb);
  mirror_upper_to_lower(c, m);
#endif
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
  check_batch(batch, "xxt");
  check_blas_dim(m, "m (rows of x)", "xxt");
  check_blas_dim(k, "k (columns of x)", "xxt");
  if (batch == 0 || m == 0) {
    return;
  }
  const int64_t x_stride = m * k;
  const int64_t c_stride = m * m;
  if (k == 0) {
    std::memset(out, 0, sizeof(float) * static_cast<size_t>(batch * c_stride));
    return;
  }
  for (int64_t b = 0; b < batch; ++b) {
    // beta = 0: the BLAS overwrites C without reading its old contents.
    syrk_full(x + b * x_stride, out + b * c_stride, m, k, 1.0f, 0.0f, false);
  }
}

void ba_plus_caa_f32(const float* a, float* out, int64_t batch, int64_t m,
                     float alpha, float beta) {
  check_batch(batch, "ba_plus_caa");
  check_blas_dim(m, "m (size of a)", "ba_plus_caa");
  if (batch == 0 || m == 0) {
    return;
  }
  const int64_t stride = m * m;
  // ssyrk reads its operand in full, and that operand must not alias C. A
  // scratch copy symmetrized from a's upper triangle serves both purposes:
  // only a's upper triangle is read, and out == a (in place) is safe.
  std::vector<float> sym(static_cast<size_t>(stride));
  for (int64_t b = 0; b < batch; ++b) {
    const float* ab = a + b * stride;
    float* ob = out + b * stride;
    copy_floats(sym.data(), ab, stride);
    mirror_upper_to_lower(sym.data(), m);
    if (ob != ab) {
      copy_floats(ob, ab, stride);  // beta * a enters through C
    }
    // out = alpha * S S^T + beta * out = alpha * a a + beta * a.
    syrk_full(sym.data(), ob, m, m, alpha, beta, false);
  }
}

namespace {

void check_plan(const OrthogonalizePlan& plan) {
  if (plan.steps < 1 || plan.coefficients == nullptr) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] coefficients must hold at least one step, "
        "got " + std::to_string(plan.steps));
  }
  for (int64_t i = 0; i < 3 * plan.steps; ++i) {
    if (!std::isfinite(plan.coefficients[i])) {
      throw std::invalid_argument(
          "[fastmuon.orthogonalize] coefficients must be finite; step " +
          std::to_string(i / 3) + " has " + std::to_string(plan.coefficients[i]));
    }
  }
  if (!(std::isfinite(plan.norm_scale) && plan.norm_scale > 0.0)) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] norm_scale must be finite and positive, got " +
        std::to_string(plan.norm_scale));
  }
  if (!(std::isfinite(plan.eps) && plan.eps >= 0.0)) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] eps must be finite and non-negative, got " +
        std::to_string(plan.eps));
  }
  if (plan.gram && plan.gram_restart_every < 1) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] gram_restart_every must be >= 1, got " +
        std::to_string(plan.gram_restart_every));
  }
}

// X / (||X||_F * norm_scale + eps). The sum of squares runs in double (four
// partial sums, so the loop is not one long dependency chain): a float
// accumulator loses digits over millions of terms. A zero matrix gives
// 0 / eps = 0.
void normalize(float* x, int64_t n, double norm_scale, double eps) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) {
      const double v = x[i + j];
      s[j] += v * v;
    }
  }
  for (; i < n; ++i) {
    const double v = x[i];
    s[0] += v * v;
  }
  const double denom = std::sqrt((s[0] + s[1]) + (s[2] + s[3])) * norm_scale + eps;
  for (i = 0; i < n; ++i) {
    x[i] = static_cast<float>(x[i] / denom);
  }
}

void add_to_diagonal(float* c, int64_t m, float a) {
  for (int64_t i = 0; i < m; ++i) {
    c[i * m + i] += a;
  }
}

// One matrix in the wide orientation W (m x n, m <= n). W is stored either
// as itself (row-major m x n, tall == false) or as its transpose (row-major
// n x m, tall == true), so a tall input needs no transposed copy: every
// product with W is rewritten on the stored matrix X = W^T:
//   W W^T   -> X^T X          (ssyrk, Trans)
//   P W     -> X P^T          (sgemm with the small factor on the right)
// The two (m x n) buffers x and x2 alternate as "current X"; the caller
// copies back if the result ends in x2.
class WideMatrix {
 public:
  WideMatrix(float* x, float* x2, int64_t m, int64_t n, bool tall)
      : cur_(x), other_(x2), m_(m), n_(n), tall_(tall) {}

  float* data() const { return cur_; }

  // c = W W^T (c is m x m, exactly symmetric).
  void gram(float* c) const {
    syrk_full(cur_, c, m_, n_, 1.0f, 0.0f, tall_);
  }

  // W <- a W + P W for an (m x m) matrix P (stored W: a X + X P^T).
  void apply(const float* p, float a) {
    copy_floats(other_, cur_, m_ * n_);
    multiply_into_other(p, a);
  }

  // W <- P W.
  void apply(const float* p) {
    multiply_into_other(p, 0.0f);
  }

 private:
  void multiply_into_other(const float* p, float beta) {
    if (tall_) {
      gemm(false, true, n_, m_, m_, 1.0f, cur_, p, beta, other_);
    } else {
      gemm(false, false, m_, n_, m_, 1.0f, p, cur_, beta, other_);
    }
    std::swap(cur_, other_);
  }

  float* cur_;
  float* other_;
  int64_t m_, n_;
  bool tall_;
};

// Scratch for one call, sized once and reused by every matrix of the batch.
struct Workspace {
  std::vector<float> x2;       // second (m x n) buffer for X updates
  std::vector<float> s1, s2;   // (m x m): A, B (standard) or R, Z (gram)
  std::vector<float> s3, s4;   // (m x m): Q, RZ (gram only)
};

// Standard iteration: per step A = X X^T, B = b A + c A A, X <- a X + B X.
void standard_iteration(WideMatrix& w, const OrthogonalizePlan& plan,
                        Workspace& ws, int64_t m) {
  float* A = ws.s1.data();
  float* B = ws.s2.data();
  for (int64_t step = 0; step < plan.steps; ++step) {
    const double* abc = plan.coefficients + 3 * step;
    w.gram(A);
    copy_floats(B, A, m * m);  // b A enters through ssyrk's C
    syrk_full(A, B, m, m, static_cast<float>(abc[2]), static_cast<float>(abc[1]), false);
    w.apply(B, static_cast<float>(abc[0]));
  }
}

// Gram-space iteration (see _gram_iterations in python/fastmuon/_iteration.py):
// X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so the steps run on
// (m x m) matrices; X is touched at the start, at restarts and at the end.
void gram_iteration(WideMatrix& w, const OrthogonalizePlan& plan, Workspace& ws,
                    int64_t m) {
  float* R = ws.s1.data();
  float* Z = ws.s2.data();
  float* Q = ws.s3.data();
  float* RZ = ws.s4.data();
  const int64_t mm = m * m;
  w.gram(R);
  bool q_is_identity = true;  // Q = I is kept implicit until a step needs it
  for (int64_t step = 1; step <= plan.steps; ++step) {
    const double* abc = plan.coefficients + 3 * (step - 1);
    const auto a = static_cast<float>(abc[0]);
    // Z = b R + c R R (R is kept exactly symmetric, so R R = R R^T).
    copy_floats(Z, R, mm);
    syrk_full(R, Z, m, m, static_cast<float>(abc[2]), static_cast<float>(abc[1]), false);
    if (q_is_identity) {  // Q = Z + a I
      copy_floats(Q, Z, mm);
      add_to_diagonal(Q, m, a);
      q_is_identity = false;
    } else {  // Q <- Q Z + a Q, formed in RZ (free until below) then swapped
      copy_floats(RZ, Q, mm);
      symmetric_product(Q, Z, m, 1.0f, a, RZ);
      std::swap(Q, RZ);
    }
    if (step == plan.steps) {
      break;
    }
    // RZ = R Z + a R, then R = Z RZ + a RZ = (a I + Z) R (a I + Z). Q, R, Z
    // and RZ are polynomials in R_0, so every product here is symmetric and
    // kept exactly so (the next ssyrk reads R in full to form R R).
    copy_floats(RZ, R, mm);
    symmetric_product(R, Z, m, 1.0f, a, RZ);
    copy_floats(R, RZ, mm);
    symmetric_product(Z, RZ, m, 1.0f, a, R);
    if (step % plan.gram_restart_every == 0) {
      // Restart: X <- Q X, R <- X X^T, Q <- I. Bounds the drift of R away
      // from X_k X_k^T (the Gram matrix squares the condition number).
      w.apply(Q);
      w.gram(R);
      q_is_identity = true;
    }
  }
  w.apply(Q);  // the last step always leaves an explicit Q
}

} // namespace

void orthogonalize_f32(float* x, int64_t batch, int64_t rows, int64_t cols,
                       const OrthogonalizePlan& plan) {
  check_batch(batch, "orthogonalize");
  check_blas_dim(rows, "rows", "orthogonalize");
  check_blas_dim(cols, "cols", "orthogonalize");
  check_plan(plan);
  if (batch == 0 || rows == 0 || cols == 0) {
    return;
  }
  const bool tall = rows > cols;
  const int64_t m = tall ? cols : rows;  // the wide orientation is (m x n)
  const int64_t n = tall ? rows : cols;
  const int64_t size = m * n;

  Workspace ws;
  ws.x2.resize(static_cast<size_t>(size));
  ws.s1.resize(static_cast<size_t>(m * m));
  ws.s2.resize(static_cast<size_t>(m * m));
  if (plan.gram) {
    ws.s3.resize(static_cast<size_t>(m * m));
    ws.s4.resize(static_cast<size_t>(m * m));
  }

  // Matrices run one after another, each BLAS call on the BLAS thread pool;
  // threading over the batch as well would oversubscribe the cores.
  for (int64_t b = 0; b < batch; ++b) {
    float* xb = x + b * size;
    normalize(xb, size, plan.norm_scale, plan.eps);
    WideMatrix w(xb, ws.x2.data(), m, n, tall);
    if (plan.gram) {
      gram_iteration(w, plan, ws, m);
    } else {
      standard_iteration(w, plan, ws, m);
    }
    if (w.data() != xb) {
      copy_floats(xb, w.data(), size);
    }
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
