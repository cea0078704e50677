// fastmuon/csrc/cpu_kernels.cpp: see cpu_kernels.h.
#include "cpu_kernels.h"

#include <algorithm>
#include <cfloat>
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

  // X <- D X and A <- D A D, d_i = 1 / sqrt(sum_j |A_ij|) (summed in double,
  // floored at FLT_MIN so that a zero row stays zero). d_i d_j is one product
  // for both (i, j) and (j, i), so A stays exactly symmetric.
  void aol_scale(Wide x, Square a) {
    d_.resize(static_cast<size_t>(m_));
    for (int64_t i = 0; i < m_; ++i) {
      double sum = 0.0;
      for (int64_t j = 0; j < m_; ++j) {
        sum += std::fabs(a.data[i * m_ + j]);
      }
      d_[i] = static_cast<float>(
          1.0 / std::sqrt(std::max(sum, static_cast<double>(FLT_MIN))));
    }
    for (int64_t i = 0; i < m_; ++i) {
      for (int64_t j = 0; j < m_; ++j) {
        a.data[i * m_ + j] *= d_[i] * d_[j];
      }
    }
    if (tall_) {  // stored X = W^T (n x m): row i of W is column i of X
      for (int64_t k = 0; k < n_; ++k) {
        for (int64_t i = 0; i < m_; ++i) {
          x.data[k * m_ + i] *= d_[i];
        }
      }
    } else {
      for (int64_t i = 0; i < m_; ++i) {
        for (int64_t k = 0; k < n_; ++k) {
          x.data[i * n_ + k] *= d_[i];
        }
      }
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
  std::vector<float> d_;  // aol_scale's row factors
};

} // namespace

namespace {

// One matrix of a stack: its data and its wide orientation (m x n, m <= n).
struct Matrix {
  float* data;
  int64_t m, n;
  bool tall;
};

Matrix matrix_at(float* data, int64_t rows, int64_t cols) {
  const bool tall = rows > cols;
  return {data, tall ? cols : rows, tall ? rows : cols, tall};
}

double matrix_work(const Matrix& mat) {
  return static_cast<double>(mat.m) * mat.m * mat.n;
}

// One thread's scratch, sized for the largest matrix of its list, and the
// orthogonalization of one matrix in place.
class Workspace {
 public:
  Workspace(int64_t wide, int64_t square, const OrthogonalizePlan& plan)
      : plan_(plan),
        x2_(static_cast<size_t>(wide)),
        sq_(static_cast<size_t>(square_buffers(plan) * square)) {}

  // A wide buffer for a matrix's input, kept beside the scratch (callers
  // that make the input themselves, as muon_step_f32 does; sized on first use).
  float* input() {
    if (input_.empty()) {
      input_.resize(x2_.size());
    }
    return input_.data();
  }

  void orthogonalize(const Matrix& mat) {
    const OrthogonalizePlan plan = plan_for_shape(plan_, mat.m, mat.n);
    std::vector<BlasOps::Square> squares;  // handles into sq_, in any order
    for (int i = 0; i < square_buffers(plan); ++i) {
      squares.push_back({sq_.data() + i * mat.m * mat.m});
    }
    BlasOps ops(mat.m, mat.n, mat.tall);
    if (plan.normalize) {
      normalize(mat.data, mat.m * mat.n, plan.norm_scale, plan.eps);
    }
    BlasOps::Wide cur{mat.data};
    BlasOps::Wide other{x2_.data()};
    iterate(ops, plan, mat.m, mat.n, cur, other, squares);
    if (cur.data != mat.data) {
      copy_floats(mat.data, cur.data, mat.m * mat.n);
    }
  }

 private:
  const OrthogonalizePlan& plan_;
  std::vector<float> x2_, sq_, input_;
};

// The largest (wide, square) sizes among `indices` of `matrices`.
std::pair<int64_t, int64_t> scratch_sizes(const std::vector<Matrix>& matrices,
                                          const std::vector<size_t>& indices) {
  int64_t wide = 0, square = 0;
  for (size_t i : indices) {
    wide = std::max(wide, matrices[i].m * matrices[i].n);
    square = std::max(square, matrices[i].m * matrices[i].m);
  }
  return {wide, square};
}

// Matrix indices shared out over at most `workers` lists: the most work
// first, each to the least loaded list (ties: the lower index), so the
// threads finish together; the lists depend on the shapes alone.
std::vector<std::vector<size_t>> share_out(const std::vector<Matrix>& matrices,
                                           int workers) {
  const auto lists = static_cast<size_t>(
      std::min<int64_t>(workers, static_cast<int64_t>(matrices.size())));
  std::vector<size_t> order(matrices.size());
  for (size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return matrix_work(matrices[a]) > matrix_work(matrices[b]);
  });
  std::vector<std::vector<size_t>> assigned(lists);
  std::vector<double> load(lists, 0.0);
  for (size_t i : order) {
    const auto least = static_cast<size_t>(
        std::min_element(load.begin(), load.end()) - load.begin());
    assigned[least].push_back(i);
    load[least] += matrix_work(matrices[i]);
  }
  return assigned;
}

// Runs per_matrix(workspace, i) for every index i of `matrices`, shared out
// over at most `workers` threads (share_out), each thread with a workspace
// sized for its own matrices. Every matrix gets the same operations wherever
// it runs, so results do not depend on `workers`.
template <class PerMatrix>
void run_shared_out(const std::vector<Matrix>& matrices,
                    const OrthogonalizePlan& plan, int workers,
                    const PerMatrix& per_matrix) {
  const auto lists = share_out(matrices, workers);
  parallel_tasks(static_cast<int>(lists.size()), [&](int t) {
    const auto& list = lists[static_cast<size_t>(t)];
    const auto [wide, square] = scratch_sizes(matrices, list);
    Workspace ws(wide, square, plan);
    for (size_t i : list) {
      per_matrix(ws, i);
    }
  });
}

void check_workers(int workers, const char* op) {
  if (workers < 1) {
    throw std::invalid_argument(std::string("[fastmuon.") + op +
                                "] workers must be >= 1, got " +
                                std::to_string(workers));
  }
}

} // namespace

void orthogonalize_stacks_f32(const std::vector<Stack>& stacks,
                              const OrthogonalizePlan& plan, int workers) {
  check_plan(plan);
  check_workers(workers, "orthogonalize");
  std::vector<Matrix> matrices;
  for (const auto& st : stacks) {
    check_batch(st.batch, "orthogonalize");
    check_blas_dim(st.rows, "rows", "orthogonalize");
    check_blas_dim(st.cols, "cols", "orthogonalize");
    if (st.rows == 0 || st.cols == 0) {
      continue;
    }
    for (int64_t b = 0; b < st.batch; ++b) {
      matrices.push_back(
          matrix_at(st.data + b * st.rows * st.cols, st.rows, st.cols));
    }
  }
  run_shared_out(matrices, plan, workers, [&](Workspace& ws, size_t i) {
    ws.orthogonalize(matrices[i]);
  });
}

void orthogonalize_each_f32(
    const std::vector<MatrixShape>& shapes, const OrthogonalizePlan& plan,
    int workers, const std::function<void(size_t, float*)>& prepare,
    const std::function<void(size_t, float*)>& finish, const char* op) {
  check_plan(plan);
  check_workers(workers, op);
  std::vector<Matrix> matrices;  // shapes only: each is computed in scratch
  std::vector<size_t> index;     // its entry in shapes
  for (size_t i = 0; i < shapes.size(); ++i) {
    check_blas_dim(shapes[i].rows, "rows", op);
    check_blas_dim(shapes[i].cols, "cols", op);
    if (shapes[i].rows > 0 && shapes[i].cols > 0) {
      matrices.push_back(matrix_at(nullptr, shapes[i].rows, shapes[i].cols));
      index.push_back(i);
    }
  }
  run_shared_out(matrices, plan, workers, [&](Workspace& ws, size_t i) {
    Matrix mat = matrices[i];
    mat.data = ws.input();
    prepare(index[i], mat.data);
    ws.orthogonalize(mat);
    finish(index[i], mat.data);
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
