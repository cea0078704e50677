// fastmuon/csrc/cpu_kernels.cpp: see cpu_kernels.h.
#include "cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "blas.h"
#include "parallel.h"

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

// The operations of fastmuon::iterate on the BLAS, for one matrix in the wide
// orientation W (m x n, m <= n). W is stored either as itself (row-major
// m x n, tall == false) or as its transpose (row-major n x m, tall == true),
// so a tall input needs no transposed copy: every product with W is
// rewritten on the stored matrix X = W^T:
//   W W^T   -> X^T X          (ssyrk, Trans)
//   P W     -> X P^T          (sgemm with the small factor on the right)
class BlasOps {
 public:
  struct Wide {
    float* data;
  };
  struct Square {
    float* data;
  };

  BlasOps(int64_t m, int64_t n, bool tall) : m_(m), n_(n), tall_(tall) {}

  // Below these row counts OpenBLAS's full sgemm was faster than ssyrk,
  // which computes half the products (2-core AMD EPYC, one thread,
  // 2026-11-30): W W^T 0.51 vs 0.93 us at 16 x 64, 3.0 vs 4.4 at 32 x 128,
  // level at 48 x 192, slower from 64 x 256 (24.9 vs 21.7); A A 4.8 vs 6.8 us
  // at 64 x 64, level at 96. The lower triangle is mirrored either way, so
  // the result stays exactly symmetric.
  static constexpr int64_t kXxtGemmBelowRows = 48;
  static constexpr int64_t kSquareGemmBelowRows = 96;

  void xxt(Wide x, Square out) const {
    if (m_ < kXxtGemmBelowRows) {
      // stored X = W^T when tall: W W^T = X^T X
      gemm(tall_, !tall_, m_, m_, n_, 1.0f, x.data, x.data, 0.0f, out.data);
      mirror_upper_to_lower(out.data, m_);
    } else {
      syrk_full(x.data, out.data, m_, n_, 1.0f, 0.0f, tall_);
    }
  }

  // a is exactly symmetric here (every square of the iteration is), so
  // ssyrk reads it in full as its own transpose.
  void ba_plus_caa(Square a, Square out, float alpha, float beta) const {
    copy_floats(out.data, a.data, m_ * m_);  // beta A enters through C
    if (m_ < kSquareGemmBelowRows) {
      gemm(false, false, m_, m_, m_, alpha, a.data, a.data, beta, out.data);
      mirror_upper_to_lower(out.data, m_);
    } else {
      syrk_full(a.data, out.data, m_, m_, alpha, beta, false);
    }
  }

  void addmm(Wide c, Square a, Wide b, Wide out, float alpha,
             float beta) const {
    copy_floats(out.data, c.data, m_ * n_);
    times_wide(a, b, out, alpha, beta);
  }

  void addmm(Square c, Square a, Square b, Square out, float alpha,
             float beta) const {
    copy_floats(out.data, c.data, m_ * m_);
    symmetric_product(a.data, b.data, m_, alpha, beta, out.data);
  }

  void matmul(Square a, Wide b, Wide out) const {
    times_wide(a, b, out, 1.0f, 0.0f);
  }

  void add_identity(Square z, Square out, float a) const {
    copy_floats(out.data, z.data, m_ * m_);
    for (int64_t i = 0; i < m_; ++i) {
      out.data[i * m_ + i] += a;
    }
  }

 private:
  // out = alpha P W + beta out (stored W: alpha X P^T + beta out).
  void times_wide(Square p, Wide w, Wide out, float alpha, float beta) const {
    if (tall_) {
      gemm(false, true, n_, m_, m_, alpha, w.data, p.data, beta, out.data);
    } else {
      gemm(false, false, m_, n_, m_, alpha, p.data, w.data, beta, out.data);
    }
  }

  int64_t m_, n_;
  bool tall_;
};

} // namespace

namespace {

// One matrix of a stack: its data and its wide orientation (m x n, m <= n).
struct Matrix {
  float* data;
  int64_t m, n;
  bool tall;
};

// The matrices, one after another, with scratch sized for the largest (one
// list runs per thread).
void orthogonalize_list(const std::vector<Matrix>& list,
                        const OrthogonalizePlan& plan) {
  int64_t wide = 0, square = 0;
  for (const auto& mat : list) {
    wide = std::max(wide, mat.m * mat.n);
    square = std::max(square, mat.m * mat.m);
  }
  const int nsq = square_buffers(plan);
  std::vector<float> x2(static_cast<size_t>(wide));
  std::vector<float> sq(static_cast<size_t>(nsq * square));
  for (const auto& mat : list) {
    std::vector<BlasOps::Square> squares;  // handles into sq, in any order
    for (int i = 0; i < nsq; ++i) {
      squares.push_back({sq.data() + i * mat.m * mat.m});
    }
    BlasOps ops(mat.m, mat.n, mat.tall);
    normalize(mat.data, mat.m * mat.n, plan.norm_scale, plan.eps);
    BlasOps::Wide cur{mat.data};
    BlasOps::Wide other{x2.data()};
    iterate(ops, plan, cur, other, squares);
    if (cur.data != mat.data) {
      copy_floats(mat.data, cur.data, mat.m * mat.n);
    }
  }
}

} // namespace

void orthogonalize_stacks_f32(const std::vector<Stack>& stacks,
                              const OrthogonalizePlan& plan, int workers) {
  check_plan(plan);
  if (workers < 1) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] workers must be >= 1, got " +
        std::to_string(workers));
  }
  std::vector<Matrix> matrices;
  for (const auto& st : stacks) {
    check_batch(st.batch, "orthogonalize");
    check_blas_dim(st.rows, "rows", "orthogonalize");
    check_blas_dim(st.cols, "cols", "orthogonalize");
    if (st.rows == 0 || st.cols == 0) {
      continue;
    }
    const bool tall = st.rows > st.cols;
    const int64_t m = tall ? st.cols : st.rows;
    const int64_t n = tall ? st.rows : st.cols;
    for (int64_t b = 0; b < st.batch; ++b) {
      matrices.push_back({st.data + b * m * n, m, n, tall});
    }
  }
  if (matrices.empty()) {
    return;
  }
  // Longest work first, each matrix to the least loaded thread (ties: the
  // lower index), so threads finish together; the order is fixed by the
  // shapes alone. Every matrix gets the same operations wherever it runs.
  const int lists = static_cast<int>(
      std::min<int64_t>(workers, static_cast<int64_t>(matrices.size())));
  std::vector<size_t> order(matrices.size());
  for (size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
  }
  const auto work = [&](size_t i) {
    return static_cast<double>(matrices[i].m) * matrices[i].m * matrices[i].n;
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return work(a) > work(b); });
  std::vector<std::vector<Matrix>> assigned(static_cast<size_t>(lists));
  std::vector<double> load(static_cast<size_t>(lists), 0.0);
  for (size_t i : order) {
    const auto least = static_cast<size_t>(
        std::min_element(load.begin(), load.end()) - load.begin());
    assigned[least].push_back(matrices[i]);
    load[least] += work(i);
  }
  parallel_tasks(lists, [&](int i) {
    orthogonalize_list(assigned[static_cast<size_t>(i)], plan);
  });
}

void orthogonalize_f32(float* x, int64_t batch, int64_t rows, int64_t cols,
                       const OrthogonalizePlan& plan, int workers) {
  orthogonalize_stacks_f32({Stack{x, batch, rows, cols}}, plan, workers);
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
