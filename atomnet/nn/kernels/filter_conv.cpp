// SchNet's filter network and continuous-filter convolution in one pass over blocks of filter rows, for CPU
// (atomnet.nn.fused_filter).
//
//   A = e W1^T + b1,  S = softplus(A),  W = S W2^T + b2,  out[i_p] += x[j_p] * W[p mod h] * c[p mod h]
//
// e (h, K) is the radial basis of each filter row, W1 (H, K), W2 (F, H), c (h,) the cutoff (empty: c = 1). The
// rows are cut into one contiguous range per thread and each range into blocks of BLOCK rows, whose A, S and W
// live in the thread's scratch buffers (BLOCK x H floats each, in L2) instead of three (h, F) arrays in memory:
// the plain path writes and rereads those arrays about fifteen times per forward + backward, and on CPU those
// passes are bound by memory bandwidth.
//
// filter_conv_backward (upstream g (n_atoms, F)) recomputes A and S per block (the first layer, K = 50, is the
// cheapest product) and reads W from the forward (keep = true); per block G = c * Graw, Graw = g[i] * x[j] summed
// over a mirrored pair, and then
//   dL/dW2 += G^T S,  dL/db2 += sum G,  dS = G W2,  dA = dS * sigmoid(A),  dL/dW1 += dA^T e,  dL/db1 += sum dA,
//   dL/dx[j_p] += g[i_p] * W[p mod h] * c[p mod h],
// and for forces (need_geometry) dL/de = dA W1 and dL/dc_q = sum_k Graw_qk W_qk. Each thread accumulates into its own
// buffers, summed in a fixed order (deterministic for a thread count). The backward is not differentiable itself
// (atomnet.nn.fused_filter recomputes with torch ops when it must be).
//
// Matrix products: the BLAS that torch links (sgemm_/dgemm_, MKL in the x86 wheels), called per block from
// inside torch's parallel region, where it runs on the calling thread.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

constexpr int64_t BLOCK = 256;  // filter rows per block

// column-major BLAS: C (m x n) = alpha op(A) op(B) + beta C
inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                 double beta, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major products in the shapes of nn.Linear (X (n, k) rows, W (o, k) row-major):
// Y (n, o) = X W^T + beta Y
template <typename T>
inline void linear(const T* x, const T* w, T* y, int n, int k, int o, T beta) {
  gemm('T', 'N', o, n, k, w, k, x, k, beta, y, o);
}
// dW (o, k) += dY^T X
template <typename T>
inline void linear_weight_grad(const T* dy, const T* x, T* dw, int n, int k, int o) {
  gemm('N', 'T', k, o, n, x, k, dy, o, T(1), dw, k);
}
// dX (n, k) = dY W
template <typename T>
inline void linear_input_grad(const T* dy, const T* w, T* dx, int n, int k, int o) {
  gemm('N', 'N', k, n, o, w, k, dy, o, T(0), dx, k);
}

// e^x for x <= 0 (clamped at -80), branch-free so that the loops around it vectorise: Cephes' expf (range reduction
// by ln 2 in two parts, degree-6 polynomial, 2^n from the exponent bits); relative error ~1e-7.
inline float exp_nonpositive(float x) {
  x = std::max(x, -80.0f);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (std::floor would keep the loop from vectorising)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

// log(1 + u) for 0 <= u <= 1: 2 atanh(s) with s = u / (2 + u) <= 1/3 (series to s^13: relative error < 2e-8,
// also for tiny u, where log(1 + u) ~ u)
inline float log1p_unit(float u) {
  const float s = u / (2.0f + u), s2 = s * s;
  float p = 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

// softplus(a) = max(a, 0) + log(1 + e^-|a|) in place over n values, and with sig its slope sigmoid(a) into sig;
// above a = 20 softplus(a) = a with slope 1, as torch's softplus (threshold 20), so that float64 agrees with the
// plain path to round-off
constexpr double THRESHOLD = 20.0;

inline void softplus_rows(float* __restrict__ a, float* __restrict__ sig, int64_t n) {
  const float top = static_cast<float>(THRESHOLD);
  if (sig) {
    for (int64_t k = 0; k < n; ++k) {
      const float v = a[k], u = exp_nonpositive(-std::fabs(v)), r = 1.0f / (1.0f + u);
      sig[k] = v > top ? 1.0f : (v >= 0.0f ? r : u * r);
      a[k] = v > top ? v : std::max(v, 0.0f) + log1p_unit(u);
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      const float v = a[k];
      a[k] = v > top ? v : std::max(v, 0.0f) + log1p_unit(exp_nonpositive(-std::fabs(v)));
    }
  }
}
inline void softplus_rows(double* a, double* sig, int64_t n) {  // float64 (tests, gradcheck): libm
  for (int64_t k = 0; k < n; ++k) {
    const double v = a[k], u = std::exp(-std::fabs(v));
    if (sig) sig[k] = v > THRESHOLD ? 1.0 : (v >= 0.0 ? 1.0 / (1.0 + u) : u / (1.0 + u));
    a[k] = v > THRESHOLD ? v : std::max(v, 0.0) + std::log1p(u);
  }
}

// rows (n, o) of y = broadcast bias
template <typename T>
inline void fill_rows(T* y, const T* bias, int64_t n, int64_t o) {
  for (int64_t r = 0; r < n; ++r) std::copy(bias, bias + o, y + r * o);
}

// sum over the n rows of y (n, o) into acc (o)
template <typename T>
inline void add_row_sums(const T* y, T* acc, int64_t n, int64_t o) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < o; ++k) acc[k] += y[r * o + k];
}

// hidden (n, H) = softplus(e W1^T + b1) for a block of n basis rows; with sig, also sigmoid(e W1^T + b1)
template <typename T>
inline void hidden_layer(const T* e, const T* w1, const T* b1, T* hidden, T* sig, int n, int k, int h) {
  fill_rows(hidden, b1, n, h);
  linear(e, w1, hidden, n, k, h, T(1));
  softplus_rows(hidden, sig, static_cast<int64_t>(n) * h);
}

struct Shapes {
  int64_t n_atoms, f, h, k, hidden, n_pairs;
  bool mirrored;
};

Shapes check(const torch::Tensor& x, const torch::Tensor& rbf, const torch::Tensor& w1, const torch::Tensor& b1,
             const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& c, const torch::Tensor& pi,
             const torch::Tensor& pj) {
  for (const auto* t : {&x, &rbf, &w1, &b1, &w2, &b2, &c}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "filter_conv: contiguous CPU tensors only");
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "filter_conv: inputs of one dtype");
  }
  TORCH_CHECK(x.dim() == 2 && rbf.dim() == 2 && w1.dim() == 2 && w2.dim() == 2, "filter_conv: 2-d inputs");
  Shapes s{x.size(0), x.size(1), rbf.size(0), rbf.size(1), w1.size(0), pi.numel(), false};
  TORCH_CHECK(w1.size(1) == s.k && b1.numel() == s.hidden, "filter_conv: first layer of shape (H, K), (H,)");
  TORCH_CHECK(w2.size(0) == s.f && w2.size(1) == s.hidden && b2.numel() == s.f,
              "filter_conv: second layer of shape (F, H), (F,)");
  TORCH_CHECK(c.numel() == 0 || (c.dim() == 1 && c.size(0) == s.h), "filter_conv: scale of shape (h,)");
  TORCH_CHECK(pi.scalar_type() == torch::kLong && pj.scalar_type() == torch::kLong && pi.is_contiguous() &&
                  pj.is_contiguous() && pj.numel() == s.n_pairs,
              "filter_conv: contiguous int64 pairs");
  TORCH_CHECK(s.n_pairs == s.h || s.n_pairs == 2 * s.h, "filter_conv: one filter row per pair or per mirrored pair");
  TORCH_CHECK(std::max({s.f, s.k, s.hidden, BLOCK}) < (int64_t(1) << 30), "filter_conv: sizes beyond BLAS int");
  s.mirrored = s.n_pairs == 2 * s.h;
  return s;
}

int64_t thread_count(int64_t h) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), h / (2 * BLOCK)));
}

// run body(t, q0, q1) for t in [0, threads) over contiguous ranges of the h rows, in parallel
template <typename Body>
void over_threads(int64_t threads, int64_t h, const Body& body) {
  if (threads == 1) {
    body(0, 0, h);
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) body(t, h * t / threads, h * (t + 1) / threads);
  });
}

// dst += each of parts, in order, in parallel over the elements
template <typename T>
void sum_into(torch::Tensor& dst, const std::vector<torch::Tensor>& parts) {
  T* d = dst.data_ptr<T>();
  at::parallel_for(0, dst.numel(), 4096, [&](int64_t a0, int64_t a1) {
    for (const auto& p : parts) {
      const T* s = p.data_ptr<T>();
      for (int64_t k = a0; k < a1; ++k) d[k] += s[k];
    }
  });
}

}  // namespace

// {out (n_atoms, F), W (h, F) when keep, else empty}
std::vector<torch::Tensor> filter_conv(torch::Tensor x, torch::Tensor rbf, torch::Tensor w1, torch::Tensor b1,
                                       torch::Tensor w2, torch::Tensor b2, torch::Tensor c, torch::Tensor pi,
                                       torch::Tensor pj, bool keep) {
  const Shapes s = check(x, rbf, w1, b1, w2, b2, c, pi, pj);
  auto out = torch::zeros({s.n_atoms, s.f}, x.options());
  auto filters = keep ? torch::empty({s.h, s.f}, x.options()) : torch::empty({0}, x.options());
  if (s.h == 0 || s.f == 0) return {out, filters};
  const int64_t threads = thread_count(s.h);
  std::vector<torch::Tensor> partial(threads - 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "atomnet_filter_conv", [&] {
    using T = scalar_t;
    const T *xp = x.data_ptr<T>(), *ep = rbf.data_ptr<T>(), *w1p = w1.data_ptr<T>(), *b1p = b1.data_ptr<T>();
    const T *w2p = w2.data_ptr<T>(), *b2p = b2.data_ptr<T>(), *cp = c.numel() ? c.data_ptr<T>() : nullptr;
    const int64_t *ip = pi.data_ptr<int64_t>(), *jp = pj.data_ptr<int64_t>();
    over_threads(threads, s.h, [&](int64_t t, int64_t q0, int64_t q1) {
      T* target = out.data_ptr<T>();
      if (t > 0) {
        partial[t - 1] = torch::zeros_like(out);
        target = partial[t - 1].data_ptr<T>();
      }
      std::vector<T> hidden(BLOCK * s.hidden), rows(keep ? 0 : BLOCK * s.f);
      for (int64_t a = q0; a < q1; a += BLOCK) {
        const int n = static_cast<int>(std::min(BLOCK, q1 - a));
        T* w = keep ? filters.data_ptr<T>() + a * s.f : rows.data();
        hidden_layer(ep + a * s.k, w1p, b1p, hidden.data(), static_cast<T*>(nullptr), n, s.k, s.hidden);
        fill_rows(w, b2p, n, s.f);
        linear(hidden.data(), w2p, w, n, s.hidden, s.f, T(1));
        for (int64_t r = 0; r < n; ++r) {
          const int64_t q = a + r;
          const T scale = cp ? cp[q] : T(1);
          const T* wq = w + r * s.f;
          for (int64_t side = 0; side < (s.mirrored ? 2 : 1); ++side) {
            const int64_t p = q + side * s.h;
            T* o = target + ip[p] * s.f;
            const T* xj = xp + jp[p] * s.f;
            for (int64_t k = 0; k < s.f; ++k) o[k] += xj[k] * wq[k] * scale;
          }
        }
      }
    });
    sum_into<T>(out, partial);
  });
  return {out, filters};
}

// {dL/dx (n_atoms, F), dL/dW1 (H, K), dL/db1 (H,), dL/dW2 (F, H), dL/db2 (F,), dL/de (h, K), dL/dc (h,)}; the ones
// not asked for (need_x, need_weights, need_geometry) are empty
std::vector<torch::Tensor> filter_conv_backward(torch::Tensor g, torch::Tensor x, torch::Tensor rbf,
                                                torch::Tensor w1, torch::Tensor b1, torch::Tensor w2,
                                                torch::Tensor filters, torch::Tensor c, torch::Tensor pi,
                                                torch::Tensor pj, bool need_x, bool need_weights,
                                                bool need_geometry) {
  g = g.contiguous();
  const Shapes s = check(x, rbf, w1, b1, w2, torch::empty({x.size(1)}, x.options()), c, pi, pj);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(), "filter_conv: gradient like x");
  TORCH_CHECK(filters.dim() == 2 && filters.size(0) == s.h && filters.size(1) == s.f && filters.is_contiguous(),
              "filter_conv: filters (h, F) from the forward");
  const int64_t threads = thread_count(s.h);
  auto none = torch::empty({0}, x.options());
  auto sized = [&](bool need, std::initializer_list<int64_t> shape) { return need ? torch::zeros(shape, x.options()) : none; };
  // rows of the basis and the cutoff belong to one thread each: written in place, not summed
  auto grad_rbf = need_geometry ? torch::empty({s.h, s.k}, x.options()) : none;
  auto grad_c = need_geometry ? torch::empty({s.h}, x.options()) : none;
  // per thread: [dx (n_atoms, F), dW1 (H, K), db1 (H), dW2 (F, H), db2 (F)]
  std::vector<std::vector<torch::Tensor>> acc(threads);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "atomnet_filter_conv_backward", [&] {
    using T = scalar_t;
    const T *gp = g.data_ptr<T>(), *xp = x.data_ptr<T>(), *ep = rbf.data_ptr<T>(), *w1p = w1.data_ptr<T>();
    const T *b1p = b1.data_ptr<T>(), *w2p = w2.data_ptr<T>(), *wp = filters.data_ptr<T>();
    const T* cp = c.numel() ? c.data_ptr<T>() : nullptr;
    const int64_t *ip = pi.data_ptr<int64_t>(), *jp = pj.data_ptr<int64_t>();
    T* de = need_geometry ? grad_rbf.data_ptr<T>() : nullptr;
    T* dc = need_geometry ? grad_c.data_ptr<T>() : nullptr;
    over_threads(threads, s.h, [&](int64_t t, int64_t q0, int64_t q1) {
      auto& mine = acc[t];
      mine = {sized(need_x, {s.n_atoms, s.f}), sized(need_weights, {s.hidden, s.k}), sized(need_weights, {s.hidden}),
              sized(need_weights, {s.f, s.hidden}), sized(need_weights, {s.f})};
      T* dx = need_x ? mine[0].data_ptr<T>() : nullptr;
      std::vector<T> grow(BLOCK * s.f), hidden(BLOCK * s.hidden), sig(BLOCK * s.hidden), dhidden(BLOCK * s.hidden);
      for (int64_t a = q0; a < q1; a += BLOCK) {
        const int n = static_cast<int>(std::min(BLOCK, q1 - a));
        for (int64_t r = 0; r < n; ++r) {  // G rows, dL/dc and dL/dx
          const int64_t q = a + r;
          const T scale = cp ? cp[q] : T(1);
          const T* wq = wp + q * s.f;
          T* gq = grow.data() + r * s.f;
          std::fill(gq, gq + s.f, T(0));
          for (int64_t side = 0; side < (s.mirrored ? 2 : 1); ++side) {
            const int64_t p = q + side * s.h;
            const T *gi = gp + ip[p] * s.f, *xj = xp + jp[p] * s.f;
            for (int64_t k = 0; k < s.f; ++k) gq[k] += gi[k] * xj[k];
            if (dx) {
              T* dxj = dx + jp[p] * s.f;
              for (int64_t k = 0; k < s.f; ++k) dxj[k] += gi[k] * wq[k] * scale;
            }
          }
          if (dc) {
            T sum = 0;
            for (int64_t k = 0; k < s.f; ++k) sum += gq[k] * wq[k];
            dc[q] = sum;
          }
          if (cp)
            for (int64_t k = 0; k < s.f; ++k) gq[k] *= scale;
        }
        hidden_layer(ep + a * s.k, w1p, b1p, hidden.data(), sig.data(), n, s.k, s.hidden);
        if (need_weights) {
          linear_weight_grad(grow.data(), hidden.data(), mine[3].data_ptr<T>(), n, s.hidden, s.f);
          add_row_sums(grow.data(), mine[4].data_ptr<T>(), n, s.f);
        }
        linear_input_grad(grow.data(), w2p, dhidden.data(), n, s.hidden, s.f);
        for (int64_t k = 0; k < n * s.hidden; ++k) dhidden[k] *= sig[k];
        if (need_weights) {
          linear_weight_grad(dhidden.data(), ep + a * s.k, mine[1].data_ptr<T>(), n, s.k, s.hidden);
          add_row_sums(dhidden.data(), mine[2].data_ptr<T>(), n, s.hidden);
        }
        if (de) linear_input_grad(dhidden.data(), w1p, de + a * s.k, n, s.k, s.hidden);
      }
    });
  });
  std::vector<torch::Tensor> result = acc[0];
  for (size_t slot = 0; slot < result.size(); ++slot) {
    if (result[slot].numel() == 0) continue;
    std::vector<torch::Tensor> parts;
    for (int64_t t = 1; t < threads; ++t) parts.push_back(acc[t][slot]);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "atomnet_filter_conv_sum", [&] { sum_into<scalar_t>(result[slot], parts); });
  }
  result.push_back(grad_rbf);
  result.push_back(grad_c);
  return result;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("filter_conv", &filter_conv, "out[i_p] += x[j_p] * W[p mod h] * c[p mod h], W = softplus(e W1^T + b1) W2^T + b2");
  m.def("filter_conv_backward", &filter_conv_backward,
        "(dL/dx, dL/dW1, dL/db1, dL/dW2, dL/db2, dL/de, dL/dc) of filter_conv");
}
