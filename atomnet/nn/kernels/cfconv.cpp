// Fused continuous-filter convolution kernels for CPU (atomnet.nn.fused).
//
// conv:  out[i_p] += x[j_p] * w[p mod h] * c[p mod h]              (n_atoms, F); no (n_pairs, F) intermediate
// outer: g_w[q]    = c[q] * sum over the pairs p with p mod h = q of a[i_p] * b[j_p]    (h, F)
//
// table_conv / table_grads: the same convolution with each filter row computed on the fly from a cubic Hermite
// table of the distance (atomnet.nn.tabulated), W_q = c0 + t (c1 + t (c2 + t c3)) at t = r_q / h - k, so no
// (h, F) filter array exists at all (inference and MD with tabulated filters).
//
// c (h,) is an optional per-row scale (the cosine cutoff of SchNet's filters, folded in so that the (h, F)
// product W * f_c is never formed); an empty tensor means c = 1.
//
// h is the number of filter rows: h = n_pairs (one filter per directed pair) or h = n_pairs / 2 (a mirrored
// pair list, pair p + h reverses pair p, one filter per unordered pair). The two kernels are closed under
// differentiation (atomnet/nn/fused.py), so forces and force training (double backward) use them too.
// Threads: the pairs are cut into one contiguous block per thread; conv accumulates each block into its own
// (n_atoms, F) buffer and sums the buffers in a fixed order (deterministic for a given thread count).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
inline void axpy_product(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t f) {
  for (int64_t c = 0; c < f; ++c) out[c] += a[c] * b[c];
}

template <typename T>
inline void axpy_product(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, T s, int64_t f) {
  for (int64_t c = 0; c < f; ++c) out[c] += a[c] * b[c] * s;
}

template <typename T>
void conv_block(const T* x, const T* w, const T* scale, const int64_t* pi, const int64_t* pj, T* out, int64_t f,
                int64_t h, int64_t n_pairs, int64_t q0, int64_t q1) {
  const bool mirrored = n_pairs == 2 * h;
  for (int64_t q = q0; q < q1; ++q) {
    const T* wq = w + q * f;
    if (scale) {
      axpy_product(out + pi[q] * f, x + pj[q] * f, wq, scale[q], f);
      if (mirrored) axpy_product(out + pi[q + h] * f, x + pj[q + h] * f, wq, scale[q], f);
    } else {
      axpy_product(out + pi[q] * f, x + pj[q] * f, wq, f);
      if (mirrored) axpy_product(out + pi[q + h] * f, x + pj[q + h] * f, wq, f);
    }
  }
}

void check(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& pi, const torch::Tensor& pj,
           int64_t h) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "fused cfconv: CPU tensors only");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1), "fused cfconv: (n, F) inputs");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fused cfconv: inputs of one dtype");
  TORCH_CHECK(pi.scalar_type() == torch::kLong && pj.scalar_type() == torch::kLong, "fused cfconv: int64 pairs");
  TORCH_CHECK(pi.numel() == pj.numel() && (pi.numel() == h || pi.numel() == 2 * h), "fused cfconv: pair count");
}

// the scale's data, or nullptr for none (an empty tensor)
template <typename T>
const T* scale_data(const torch::Tensor& c, int64_t h) {
  if (c.numel() == 0) return nullptr;
  TORCH_CHECK(c.dim() == 1 && c.size(0) == h && c.is_contiguous(), "fused cfconv: scale of shape (h,)");
  return c.data_ptr<T>();
}


// Runs block(target, q0, q1) over the filter rows [0, h), one contiguous block per thread, each accumulating into
// its own (n_atoms, F) buffer (the first thread into out); the buffers are then summed in a fixed order.
template <typename T, typename Block>
void accumulate_rows(torch::Tensor& out, int64_t h, const Block& block) {
  T* op = out.data_ptr<T>();
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), h / 256));
  if (threads == 1) {
    block(op, 0, h);
    return;
  }
  std::vector<torch::Tensor> partial(threads - 1);
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      T* target = op;
      if (t > 0) {
        partial[t - 1] = torch::zeros_like(out);
        target = partial[t - 1].data_ptr<T>();
      }
      block(target, h * t / threads, h * (t + 1) / threads);
    }
  });
  at::parallel_for(0, out.numel(), 4096, [&](int64_t a0, int64_t a1) {
    for (int64_t t = 0; t < threads - 1; ++t) {
      const T* src = partial[t].data_ptr<T>();
      for (int64_t k = a0; k < a1; ++k) op[k] += src[k];
    }
  });
}

}  // namespace

// out (n_atoms, F) with out[i_p] = sum_p x[j_p] * w[p mod h] * c[p mod h]
torch::Tensor conv(torch::Tensor x, torch::Tensor w, torch::Tensor c, torch::Tensor pi, torch::Tensor pj,
                   int64_t n_atoms) {
  check(x, w, pi, pj, w.size(0));
  TORCH_CHECK(c.numel() == 0 || c.scalar_type() == x.scalar_type(), "fused cfconv: scale of the inputs' dtype");
  c = c.contiguous();
  x = x.contiguous(); w = w.contiguous(); pi = pi.contiguous(); pj = pj.contiguous();
  const int64_t f = x.size(1), h = w.size(0), n_pairs = pi.numel();
  auto out = torch::zeros({n_atoms, f}, x.options());
  if (h == 0 || f == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "atomnet_conv", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* cp = scale_data<scalar_t>(c, h);
    const int64_t* ip = pi.data_ptr<int64_t>();
    const int64_t* jp = pj.data_ptr<int64_t>();
    accumulate_rows<scalar_t>(out, h, [&](scalar_t* target, int64_t q0, int64_t q1) {
      conv_block(xp, wp, cp, ip, jp, target, f, h, n_pairs, q0, q1);
    });
  });
  return out;
}

// g_w (h, F) with g_w[q] = c[q] * sum over p with p mod h = q of a[i_p] * b[j_p]
torch::Tensor outer(torch::Tensor a, torch::Tensor b, torch::Tensor c, torch::Tensor pi, torch::Tensor pj,
                    int64_t h) {
  check(a, b, pi, pj, h);
  TORCH_CHECK(c.numel() == 0 || c.scalar_type() == a.scalar_type(), "fused cfconv: scale of the inputs' dtype");
  c = c.contiguous();
  a = a.contiguous(); b = b.contiguous(); pi = pi.contiguous(); pj = pj.contiguous();
  const int64_t f = a.size(1), n_pairs = pi.numel();
  auto out = torch::empty({h, f}, a.options());
  if (h == 0 || f == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "atomnet_outer", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* cp = scale_data<scalar_t>(c, h);
    const int64_t* ip = pi.data_ptr<int64_t>();
    const int64_t* jp = pj.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const bool mirrored = n_pairs == 2 * h;
    at::parallel_for(0, h, 256, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        scalar_t* __restrict__ o = op + q * f;
        const scalar_t* __restrict__ a1 = ap + ip[q] * f;
        const scalar_t* __restrict__ b1 = bp + jp[q] * f;
        const scalar_t s = cp ? cp[q] : scalar_t(1);
        if (mirrored) {
          const scalar_t* __restrict__ a2 = ap + ip[q + h] * f;
          const scalar_t* __restrict__ b2 = bp + jp[q + h] * f;
          for (int64_t k = 0; k < f; ++k) o[k] = (a1[k] * b1[k] + a2[k] * b2[k]) * s;
        } else {
          for (int64_t k = 0; k < f; ++k) o[k] = a1[k] * b1[k] * s;
        }
      }
    });
  });
  return out;
}

// The gradients of out = conv(x, w, c) with respect to w and c for an upstream gradient g, in one pass:
// G_q = sum over p with p mod h = q of g[i_p] * x[j_p]; grad_w[q] = c[q] * G_q; grad_c[q] = sum_k G_qk w_qk.
// keep: also return G itself (h, F), which the backward of this map needs (force training's double backward).
std::vector<torch::Tensor> outer_grads(torch::Tensor g, torch::Tensor x, torch::Tensor c, torch::Tensor w,
                                       torch::Tensor pi, torch::Tensor pj, bool keep) {
  const int64_t h = w.size(0);
  check(g, x, pi, pj, h);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == g.size(1) && w.scalar_type() == g.scalar_type(), "fused cfconv: filters");
  TORCH_CHECK(c.scalar_type() == g.scalar_type(), "fused cfconv: scale of the inputs' dtype");
  g = g.contiguous(); x = x.contiguous(); c = c.contiguous(); w = w.contiguous();
  pi = pi.contiguous(); pj = pj.contiguous();
  const int64_t f = g.size(1), n_pairs = pi.numel();
  auto grad_w = torch::empty({h, f}, g.options());
  auto grad_c = torch::empty({h}, g.options());
  auto kept = torch::empty({keep ? h : 0, f}, g.options());
  if (h == 0) return {grad_w, grad_c, kept};
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "atomnet_outer_grads", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cp = scale_data<scalar_t>(c, h);
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const int64_t* ip = pi.data_ptr<int64_t>();
    const int64_t* jp = pj.data_ptr<int64_t>();
    scalar_t* ow = grad_w.data_ptr<scalar_t>();
    scalar_t* oc = grad_c.data_ptr<scalar_t>();
    scalar_t* ok = keep ? kept.data_ptr<scalar_t>() : nullptr;
    const bool mirrored = n_pairs == 2 * h;
    at::parallel_for(0, h, 256, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        scalar_t* __restrict__ o = ow + q * f;
        scalar_t* __restrict__ gq = ok ? ok + q * f : nullptr;
        const scalar_t* __restrict__ wq = wp + q * f;
        const scalar_t* __restrict__ g1 = gp + ip[q] * f;
        const scalar_t* __restrict__ x1 = xp + jp[q] * f;
        const scalar_t s = cp ? cp[q] : scalar_t(1);
        scalar_t dot = 0;
        if (mirrored) {
          const scalar_t* __restrict__ g2 = gp + ip[q + h] * f;
          const scalar_t* __restrict__ x2 = xp + jp[q + h] * f;
          for (int64_t k = 0; k < f; ++k) {
            const scalar_t gk = g1[k] * x1[k] + g2[k] * x2[k];
            dot += gk * wq[k];
            o[k] = gk * s;
          }
          if (gq)
            for (int64_t k = 0; k < f; ++k) gq[k] = g1[k] * x1[k] + g2[k] * x2[k];
        } else {
          for (int64_t k = 0; k < f; ++k) {
            const scalar_t gk = g1[k] * x1[k];
            dot += gk * wq[k];
            o[k] = gk * s;
          }
          if (gq)
            for (int64_t k = 0; k < f; ++k) gq[k] = g1[k] * x1[k];
        }
        oc[q] = dot;
      }
    });
  });
  return {grad_w, grad_c, kept};
}

// The backward of (grad_w, grad_c) = (c * G, sum_k G * w) in (G, w, c), in one pass over the rows, for upstream
// gradients gw (h, F) and gc (h,): H = gw * c + gc * w (the gradient with respect to G, which the caller turns into
// the gradients of g and x with two conv calls), dw = gc * G, dc[q] = sum_k gw_qk G_qk.
std::vector<torch::Tensor> outer_grads_backward(torch::Tensor gw, torch::Tensor gc, torch::Tensor c, torch::Tensor w,
                                                torch::Tensor big_g) {
  const int64_t h = w.size(0), f = w.size(1);
  TORCH_CHECK(gw.sizes() == w.sizes() && big_g.sizes() == w.sizes(), "fused cfconv: (h, F) gradients");
  TORCH_CHECK(gc.dim() == 1 && gc.size(0) == h && c.dim() == 1 && c.size(0) == h, "fused cfconv: (h,) scales");
  TORCH_CHECK(gw.scalar_type() == w.scalar_type() && gc.scalar_type() == w.scalar_type() &&
                  c.scalar_type() == w.scalar_type() && big_g.scalar_type() == w.scalar_type(),
              "fused cfconv: one dtype");
  gw = gw.contiguous(); gc = gc.contiguous(); c = c.contiguous(); w = w.contiguous(); big_g = big_g.contiguous();
  auto grad_g = torch::empty({h, f}, w.options());
  auto grad_w = torch::empty({h, f}, w.options());
  auto grad_c = torch::empty({h}, w.options());
  if (h == 0) return {grad_g, grad_w, grad_c};
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "atomnet_outer_grads_backward", [&] {
    const scalar_t* gwp = gw.data_ptr<scalar_t>();
    const scalar_t* gcp = gc.data_ptr<scalar_t>();
    const scalar_t* cp = c.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* bp = big_g.data_ptr<scalar_t>();
    scalar_t* hp = grad_g.data_ptr<scalar_t>();
    scalar_t* dwp = grad_w.data_ptr<scalar_t>();
    scalar_t* dcp = grad_c.data_ptr<scalar_t>();
    at::parallel_for(0, h, 256, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const scalar_t s = cp[q], t = gcp[q];
        const scalar_t* __restrict__ a = gwp + q * f;
        const scalar_t* __restrict__ wq = wp + q * f;
        const scalar_t* __restrict__ b = bp + q * f;
        scalar_t* __restrict__ o = hp + q * f;
        scalar_t* __restrict__ d = dwp + q * f;
        scalar_t dot = 0;
        for (int64_t k = 0; k < f; ++k) {
          o[k] = a[k] * s + t * wq[k];
          d[k] = t * b[k];
          dot += a[k] * b[k];
        }
        dcp[q] = dot;
      }
    });
  });
  return {grad_g, grad_w, grad_c};
}

namespace {

// the segment k and local coordinate t of distance r on a table of n_seg segments of width 1 / inv_h, as
// TabulatedFilter.forward: k = clamp(floor(r inv_h), 0, n_seg - 1), t = min(r inv_h - k, 1); slope: dt/dr
// (inv_h, or 0 where t was clamped)
template <typename T>
inline void segment(T r, T inv_h, int64_t n_seg, int64_t& k, T& t, T& slope) {
  const T x = r * inv_h;
  T node = std::floor(x);
  node = node < T(0) ? T(0) : (node > T(n_seg - 1) ? T(n_seg - 1) : node);
  k = static_cast<int64_t>(node);
  t = x - node;
  slope = t <= T(1) ? inv_h : T(0);
  if (t > T(1)) t = T(1);
}

template <typename T>
void table_conv_block(const T* x, const T* coef, T inv_h, int64_t n_seg, const T* r, const T* scale,
                      const int64_t* pi, const int64_t* pj, T* out, int64_t f, int64_t h, int64_t n_pairs,
                      int64_t q0, int64_t q1) {
  const bool mirrored = n_pairs == 2 * h;
  std::vector<T> row(f);
  T* __restrict__ w = row.data();
  for (int64_t q = q0; q < q1; ++q) {
    int64_t k;
    T t, slope;
    segment(r[q], inv_h, n_seg, k, t, slope);
    const T* __restrict__ c = coef + k * 4 * f;
    const T s = scale ? scale[q] : T(1);
    for (int64_t m = 0; m < f; ++m) w[m] = (c[m] + t * (c[f + m] + t * (c[2 * f + m] + t * c[3 * f + m]))) * s;
    axpy_product(out + pi[q] * f, x + pj[q] * f, w, f);
    if (mirrored) axpy_product(out + pi[q + h] * f, x + pj[q + h] * f, w, f);
  }
}

void check_table(const torch::Tensor& coef, const torch::Tensor& r, const torch::Tensor& x, int64_t f) {
  TORCH_CHECK(coef.dim() == 3 && coef.size(1) == 4 && coef.size(2) == f && coef.size(0) > 0,
              "fused cfconv: table of shape (n_segments, 4, F)");
  TORCH_CHECK(coef.scalar_type() == x.scalar_type() && r.scalar_type() == x.scalar_type(),
              "fused cfconv: table and distances of the inputs' dtype");
  TORCH_CHECK(r.dim() == 1, "fused cfconv: distances of shape (h,)");
}

}  // namespace

// out (n_atoms, F) with out[i_p] = sum_p x[j_p] * W(r_{p mod h}) * c[p mod h], W from the Hermite table
torch::Tensor table_conv(torch::Tensor x, torch::Tensor coef, double inv_h, torch::Tensor r, torch::Tensor c,
                         torch::Tensor pi, torch::Tensor pj, int64_t n_atoms) {
  x = x.contiguous(); coef = coef.contiguous(); r = r.contiguous(); c = c.contiguous();
  pi = pi.contiguous(); pj = pj.contiguous();
  const int64_t f = x.size(1), h = r.size(0), n_pairs = pi.numel(), n_seg = coef.size(0);
  check_table(coef, r, x, f);
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "fused cfconv: CPU (n, F) inputs");
  TORCH_CHECK(pi.scalar_type() == torch::kLong && pj.scalar_type() == torch::kLong, "fused cfconv: int64 pairs");
  TORCH_CHECK(pi.numel() == pj.numel() && (n_pairs == h || n_pairs == 2 * h), "fused cfconv: pair count");
  TORCH_CHECK(c.numel() == 0 || c.scalar_type() == x.scalar_type(), "fused cfconv: scale of the inputs' dtype");
  auto out = torch::zeros({n_atoms, f}, x.options());
  if (h == 0 || f == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "atomnet_table_conv", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cf = coef.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    const scalar_t* cp = scale_data<scalar_t>(c, h);
    const int64_t* ip = pi.data_ptr<int64_t>();
    const int64_t* jp = pj.data_ptr<int64_t>();
    const scalar_t ih = static_cast<scalar_t>(inv_h);
    accumulate_rows<scalar_t>(out, h, [&](scalar_t* target, int64_t q0, int64_t q1) {
      table_conv_block(xp, cf, ih, n_seg, rp, cp, ip, jp, target, f, h, n_pairs, q0, q1);
    });
  });
  return out;
}

// The gradients of out = table_conv(x, r, c) with respect to r and c for an upstream gradient g, in one pass:
// G_q = sum over p with p mod h = q of g[i_p] * x[j_p]; grad_r[q] = c[q] sum_k G_qk dW_qk/dr;
// grad_c[q] = sum_k G_qk W_qk.
std::vector<torch::Tensor> table_grads(torch::Tensor g, torch::Tensor x, torch::Tensor coef, double inv_h,
                                       torch::Tensor r, torch::Tensor c, torch::Tensor pi, torch::Tensor pj) {
  g = g.contiguous(); x = x.contiguous(); coef = coef.contiguous(); r = r.contiguous(); c = c.contiguous();
  pi = pi.contiguous(); pj = pj.contiguous();
  const int64_t f = x.size(1), h = r.size(0), n_pairs = pi.numel(), n_seg = coef.size(0);
  check_table(coef, r, x, f);
  check(g, x, pi, pj, h);
  TORCH_CHECK(c.numel() == h && c.scalar_type() == x.scalar_type(), "fused cfconv: scale of shape (h,)");
  auto grad_r = torch::empty({h}, x.options());
  auto grad_c = torch::empty({h}, x.options());
  if (h == 0) return {grad_r, grad_c};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "atomnet_table_grads", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cf = coef.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    const scalar_t* cp = c.data_ptr<scalar_t>();
    const int64_t* ip = pi.data_ptr<int64_t>();
    const int64_t* jp = pj.data_ptr<int64_t>();
    scalar_t* orr = grad_r.data_ptr<scalar_t>();
    scalar_t* occ = grad_c.data_ptr<scalar_t>();
    const scalar_t ih = static_cast<scalar_t>(inv_h);
    const bool mirrored = n_pairs == 2 * h;
    at::parallel_for(0, h, 256, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        int64_t k;
        scalar_t t, slope;
        segment(rp[q], ih, n_seg, k, t, slope);
        const scalar_t* __restrict__ co = cf + k * 4 * f;
        const scalar_t* __restrict__ g1 = gp + ip[q] * f;
        const scalar_t* __restrict__ x1 = xp + jp[q] * f;
        scalar_t dot_w = 0, dot_d = 0;
        auto accumulate = [&](auto pair_product) {
          for (int64_t m = 0; m < f; ++m) {
            const scalar_t gm = pair_product(m);
            const scalar_t c1 = co[f + m], c2 = co[2 * f + m], c3 = co[3 * f + m];
            dot_w += gm * (co[m] + t * (c1 + t * (c2 + t * c3)));
            dot_d += gm * (c1 + t * (scalar_t(2) * c2 + scalar_t(3) * t * c3));
          }
        };
        if (mirrored) {
          const scalar_t* __restrict__ g2 = gp + ip[q + h] * f;
          const scalar_t* __restrict__ x2 = xp + jp[q + h] * f;
          accumulate([&](int64_t m) { return g1[m] * x1[m] + g2[m] * x2[m]; });
        } else {
          accumulate([&](int64_t m) { return g1[m] * x1[m]; });
        }
        orr[q] = cp[q] * slope * dot_d;
        occ[q] = dot_w;
      }
    });
  });
  return {grad_r, grad_c};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("outer_grads", &outer_grads, "(c[q] * G_q, sum_k G_qk w_qk) with G_q = sum_{p mod h = q} g[i_p] * x[j_p]");
  m.def("outer_grads_backward", &outer_grads_backward, "(gw * c + gc * w, gc * G, sum_k gw * G)");
  m.def("table_conv", &table_conv, "out[i_p] += x[j_p] * W(r[p mod h]) * c[p mod h], W from a Hermite table");
  m.def("table_grads", &table_grads, "(c sum_k G dW/dr, sum_k G W) of table_conv");
  m.def("conv", &conv, "out[i_p] += x[j_p] * w[p mod h] * c[p mod h]");
  m.def("outer", &outer, "g_w[q] = c[q] * sum_{p mod h = q} a[i_p] * b[j_p]");
}
