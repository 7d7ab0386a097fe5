// L1 (Manhattan) distances between the rows of two matrices, for the Laplacian kernel of KRR
// (atomnet/baselines/krr.py): D_ab = sum_k |X_ak - Y_bk|.
//
// Register blocking: four rows of X are compared with one row of Y per pass over k, so each Y value is loaded
// once for four sums; Y is walked in tiles of 64 rows (64 x d values stay in L2) and the tiles are spread over
// OpenMP threads. Every D_ab is one sum in the order k = 0 ... d-1 lanes-wise (the simd reduction), so the
// result does not depend on the number of threads.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr int64_t kTile = 64;

template <typename T>
inline T row_l1(const T* __restrict x, const T* __restrict y, int64_t d) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < d; ++k) s += std::abs(x[k] - y[k]);
  return s;
}

template <typename T>
void l1_rows(const T* __restrict X, const T* __restrict Y, T* __restrict D, int64_t n, int64_t m, int64_t d) {
  const int64_t tiles = (m + kTile - 1) / kTile;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t j0 = t * kTile, j1 = std::min(m, j0 + kTile);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const T* x0 = X + i * d;
      const T* x1 = x0 + d;
      const T* x2 = x1 + d;
      const T* x3 = x2 + d;
      for (int64_t j = j0; j < j1; ++j) {
        const T* y = Y + j * d;
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t k = 0; k < d; ++k) {
          const T yk = y[k];
          s0 += std::abs(x0[k] - yk);
          s1 += std::abs(x1[k] - yk);
          s2 += std::abs(x2[k] - yk);
          s3 += std::abs(x3[k] - yk);
        }
        D[i * m + j] = s0;
        D[(i + 1) * m + j] = s1;
        D[(i + 2) * m + j] = s2;
        D[(i + 3) * m + j] = s3;
      }
    }
    for (; i < n; ++i)
      for (int64_t j = j0; j < j1; ++j) D[i * m + j] = row_l1(X + i * d, Y + j * d, d);
  }
}

torch::Tensor l1_distance(const torch::Tensor& X, const torch::Tensor& Y) {
  TORCH_CHECK(X.dim() == 2 && Y.dim() == 2 && X.size(1) == Y.size(1), "l1_distance: X (n, d) and Y (m, d)");
  TORCH_CHECK(X.scalar_type() == Y.scalar_type(), "l1_distance: X and Y must have one dtype");
  auto x = X.contiguous(), y = Y.contiguous();
  auto D = torch::empty({x.size(0), y.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l1_distance", [&] {
    l1_rows<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), D.data_ptr<scalar_t>(), x.size(0),
                      y.size(0), x.size(1));
  });
  return D;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("l1_distance", &l1_distance, "L1 distances between the rows of X (n, d) and Y (m, d): (n, m)");
}
