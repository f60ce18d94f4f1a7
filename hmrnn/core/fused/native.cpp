// The fused per-step cell of the hand-written loop, in C++ (hmrnn/core/fused/native.py builds it).
//
// Each function does, in one call, what the torch-operation versions in cell.py and ln_cell.py do
// in 20-80 small operations: the same equations, the same order of arithmetic, on the same
// buffers. Rows (the batch) run in parallel on torch's threads; sums over rows (gradients of
// gains and biases) in parallel over columns. float32 uses a polynomial exp that the compiler
// vectorises (Cephes' expf, about 1 ulp) and a rational tanh (about 3 ulp); float64 uses
// std::exp and std::tanh, so that the tests can compare with the reference in float64.
//
// Layouts: a (M, N) tensor may be a strided view whose last dimension has stride 1 (the loop's
// column slices); a (M, 1) tensor is a column, read with its row stride; `add` may have row
// stride 0 (a bias expanded over the rows).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr double LN_EPS = 1e-5;

template <typename T>
struct Rows {
  T* p = nullptr;
  int64_t s = 0;
  T* operator[](int64_t i) const { return p + i * s; }
  explicit operator bool() const { return p != nullptr; }
};

template <typename T>
Rows<T> rows(const Tensor& t) {
  TORCH_CHECK(t.size(-1) == 1 || t.stride(-1) == 1, "native cell: last dimension must be dense");
  return Rows<T>{t.data_ptr<T>(), t.dim() > 1 ? t.stride(0) : 0};
}

template <typename T>
Rows<T> rows(const OptTensor& t) {
  return t.has_value() ? rows<T>(*t) : Rows<T>{};
}

// --------------------------------------------------------------------------- element functions
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigm(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
// a rational approximation (odd degree 13 over even degree 6), about 3 ulp everywhere; unlike
// 2 sigm(2x) - 1 it keeps its relative accuracy near 0
inline float tanh_(float x) {
  x = std::min(std::max(x, -7.90531110763549805f), 7.90531110763549805f);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}
inline double tanh_(double x) { return std::tanh(x); }

template <typename T>
int64_t grain(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

// mean and rstd of a row (two passes, biased variance); rstd 0 for an all-zero row
template <typename T>
void row_stats(const T* x, int64_t n, T& mean, T& rstd) {
  T sum = 0, nonzero = 0;
#pragma omp simd reduction(+ : sum, nonzero)
  for (int64_t j = 0; j < n; ++j) {
    sum += x[j];
    nonzero += x[j] != T(0) ? T(1) : T(0);
  }
  const bool present = nonzero > T(0);
  mean = sum / T(n);
  T var = 0;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < n; ++j) {
    const T d = x[j] - mean;
    var += d * d;
  }
  var /= T(n);
  rstd = present ? T(1) / std::sqrt(var + T(LN_EPS)) : T(0);
}

// s += gate * (gain * xhat) over a row: one function, so that the forward and the backward's
// recomputation round alike
template <typename T>
inline void add_block(T* out, const T* y, const T* w, const T* gate, int64_t G) {
  if (gate) {
    const T g = *gate;
    for (int64_t j = 0; j < G; ++j) out[j] = out[j] + (y[j] * w[j]) * g;
  } else {
    for (int64_t j = 0; j < G; ++j) out[j] = out[j] + y[j] * w[j];
  }
}

// the gate activations of a row from s: sigmoid, g = 2 sigmoid - 1 (its columns are doubled),
// the raw s_z kept after them
template <typename T>
inline void activate(const T* x, T* gt, int64_t G, int64_t H) {
  for (int64_t j = 0; j < 4 * H; ++j) gt[j] = sigm(x[j]);
  T* g = gt + 3 * H;
  for (int64_t j = 0; j < H; ++j) g[j] = g[j] * T(2) - T(1);
  if (G > 4 * H) gt[4 * H] = x[4 * H];
}

// tanh of the normalised c of a row
template <typename T>
inline void squash_normed(const T* c, T mean, T rstd, const T* gain, const T* bias, T* t,
                          int64_t H) {
  for (int64_t j = 0; j < H; ++j) t[j] = tanh_(bias[j] + ((c[j] - mean) * rstd) * gain[j]);
}

// a row's operation masks (model.md §1) from z_{t-1} (flush, may be absent) and z_t^{l-1}
template <typename T>
inline void row_masks(const T* flush, T z_in, T& update, T& copy, T& act) {
  if (flush) {
    const T k = T(1) - flush[0];
    update = k * z_in;
    copy = k * (T(1) - z_in);
  } else {
    update = z_in;
    copy = T(1) - z_in;
  }
  act = T(1) - copy;
}

// ------------------------------------------------------------------------------------ forward
template <typename T>
void gather_impl(const Tensor& X, const Tensor& h_prev, const OptTensor& above,
                 const OptTensor& z_above, const OptTensor& below, const OptTensor& z_below) {
  const int64_t M = X.size(0), H = h_prev.size(1);
  auto x = rows<T>(X), hp = rows<T>(h_prev), ab = rows<T>(above), za = rows<T>(z_above);
  auto be = rows<T>(below), zb = rows<T>(z_below);
  at::parallel_for(0, M, grain<T>(X.size(1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      T* out = x[r];
      std::copy(hp[r], hp[r] + H, out);
      int64_t col = H;
      if (ab) {
        const T g = za[r][0];
        const T* a = ab[r];
        for (int64_t j = 0; j < H; ++j) out[col + j] = a[j] * g;
        col += H;
      }
      if (be) {
        const T g = zb ? zb[r][0] : T(1);
        const T* a = be[r];
        for (int64_t j = 0; j < H; ++j) out[col + j] = a[j] * g;
      }
    }
  });
}

template <typename T>
void preact_forward_impl(const std::vector<Tensor>& P, const Tensor& gains,
                         const std::vector<OptTensor>& gates, const Tensor& add, const Tensor& s,
                         const std::vector<Tensor>& xhat, const Tensor& stats) {
  const int64_t M = s.size(0), G = s.size(1), n = static_cast<int64_t>(P.size());
  std::vector<Rows<T>> p(n), xh(n), gt(n);
  for (int64_t k = 0; k < n; ++k) {
    p[k] = rows<T>(P[k]);
    xh[k] = rows<T>(xhat[k]);
    gt[k] = rows<T>(gates[k]);
  }
  auto gn = rows<T>(gains), ad = rows<T>(add), so = rows<T>(s), st = rows<T>(stats);
  at::parallel_for(0, M, grain<T>(n * G), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      T* out = so[r];
      const T* a = ad[r];
      std::copy(a, a + G, out);
      for (int64_t k = 0; k < n; ++k) {
        const T* x = p[k][r];
        T* y = xh[k][r];
        const T* w = gn[k];
        T mean, rstd;
        row_stats(x, G, mean, rstd);
        st[r][k] = rstd;
        for (int64_t j = 0; j < G; ++j) y[j] = (x[j] - mean) * rstd;
        add_block(out, y, w, gt[k] ? gt[k][r] : static_cast<const T*>(nullptr), G);
      }
    }
  });
}

// sample: 0 none (no detector, or the caller samples), 1 step, 2 soft (hard sigmoid)
template <typename T>
void cell_forward_impl(const Tensor& s, const Tensor& c_prev, const Tensor& h_prev,
                       const OptTensor& flush, const OptTensor& z_in, const Tensor& gates,
                       const Tensor& c_new, const Tensor& tc, const Tensor& h_new,
                       const OptTensor& z_out, int64_t sample, double slope,
                       const OptTensor& norm_gain, const OptTensor& norm_bias,
                       const OptTensor& norm_stats) {
  const int64_t M = s.size(0), G = s.size(1), H = c_prev.size(1);
  auto sr = rows<T>(s), cp = rows<T>(c_prev), hp = rows<T>(h_prev), fl = rows<T>(flush);
  auto zi = rows<T>(z_in), ga = rows<T>(gates), cn = rows<T>(c_new), tcr = rows<T>(tc);
  auto hn = rows<T>(h_new), zo = rows<T>(z_out), st = rows<T>(norm_stats);
  const T* gain = norm_gain ? norm_gain->data_ptr<T>() : nullptr;
  const T* bias = norm_bias ? norm_bias->data_ptr<T>() : nullptr;
  const T a = static_cast<T>(slope);
  at::parallel_for(0, M, grain<T>(G), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* x = sr[r];
      T* gt = ga[r];
      const T sz = G > 4 * H ? x[4 * H] : T(0);
      activate(x, gt, G, H);
      const T* g = gt + 3 * H;
      if (G > 4 * H) {
        if (sample == 1) zo[r][0] = sz > T(0) ? T(1) : T(0);
        if (sample == 2) zo[r][0] = std::min(std::max((a * sz + T(1)) * T(0.5), T(0)), T(1));
      }
      const T *i = gt, *f = gt + H, *o = gt + 2 * H;
      const T *c0 = cp[r], *h0 = hp[r];
      T *c = cn[r], *t = tcr[r], *h = hn[r];
      const bool first = !zi;
      T update = 0, copy = 0, act = 1, keep = 1;
      if (first) {
        keep = fl ? T(1) - fl[r][0] : T(1);
        for (int64_t j = 0; j < H; ++j) {
          T fc = f[j] * c0[j];
          if (fl) fc = fc * keep;
          c[j] = fc + i[j] * g[j];
        }
      } else {
        row_masks(fl ? fl[r] : static_cast<const T*>(nullptr), zi[r][0], update, copy, act);
        for (int64_t j = 0; j < H; ++j)
          c[j] = (copy * c0[j] + update * (f[j] * c0[j])) + act * (i[j] * g[j]);
      }
      if (gain) {
        T mean, rstd;
        row_stats(c, H, mean, rstd);
        st[r][0] = mean;
        st[r][1] = rstd;
        squash_normed(c, mean, rstd, gain, bias, t, H);
      } else {
        for (int64_t j = 0; j < H; ++j) t[j] = tanh_(c[j]);
      }
      if (first) {
        for (int64_t j = 0; j < H; ++j) h[j] = o[j] * t[j];
      } else {
        for (int64_t j = 0; j < H; ++j) h[j] = copy * h0[j] + act * (o[j] * t[j]);
      }
    }
  });
}

// ----------------------------------------------------------------------------------- backward
// With layer norm the backward recomputes what the forward did not keep: the gate activations
// (into `acts`, when given) from the normalised projections, and tanh of the normalised c_t.
template <typename T>
void recompute_impl(const std::vector<Tensor>& xhat, const OptTensor& gains,
                    const std::vector<OptTensor>& gates, const OptTensor& add,
                    const OptTensor& acts, const Tensor& c, const Tensor& stats_c,
                    const Tensor& gain_c, const Tensor& bias_c, const Tensor& tc) {
  const int64_t M = c.size(0), H = c.size(1), n = static_cast<int64_t>(xhat.size());
  const int64_t G = acts ? acts->size(1) : 0;
  std::vector<Rows<T>> xh(n), gt(n);
  for (int64_t k = 0; k < n; ++k) {
    xh[k] = rows<T>(xhat[k]);
    gt[k] = rows<T>(gates[k]);
  }
  auto gn = rows<T>(gains), ad = rows<T>(add), ac = rows<T>(acts), cr = rows<T>(c);
  auto st = rows<T>(stats_c), tcr = rows<T>(tc);
  const T *gc = gain_c.data_ptr<T>(), *bc = bias_c.data_ptr<T>();
  at::parallel_for(0, M, grain<T>(n * G + H), [&](int64_t b, int64_t e) {
    std::vector<T> s(G);
    for (int64_t r = b; r < e; ++r) {
      if (ac) {
        const T* a = ad[r];
        std::copy(a, a + G, s.data());
        for (int64_t k = 0; k < n; ++k)
          add_block(s.data(), xh[k][r], gn[k], gt[k] ? gt[k][r] : static_cast<const T*>(nullptr),
                    G);
        activate(s.data(), ac[r], G, H);
      }
      squash_normed(cr[r], st[r][0], st[r][1], gc, bc, tcr[r], H);
    }
  });
}

// grad: 0 the caller fills the z column, 1 straight-through (step, bernoulli), 2 soft
template <typename T>
std::tuple<Tensor, OptTensor, OptTensor, OptTensor> cell_backward_impl(
    const Tensor& gates, const Tensor& tc, const Tensor& c_prev, const Tensor& h_prev,
    const OptTensor& flush, const OptTensor& z_in, const Tensor& g_h, const Tensor& g_c,
    const Tensor& ds, bool grad_through_ops, int64_t grad, double slope, const OptTensor& g_z,
    const OptTensor& norm_gain, const OptTensor& norm_stats, const OptTensor& norm_c,
    const OptTensor& norm_g_gain, const OptTensor& norm_g_bias) {
  const int64_t M = gates.size(0), G = gates.size(1), H = c_prev.size(1);
  const bool first = !z_in.has_value();
  Tensor g_c_prev = at::empty({M, H}, c_prev.options());
  OptTensor carry, g_zin, g_flush;
  if (!first) carry = at::empty({M, H}, c_prev.options());
  if (grad_through_ops && !first) g_zin = at::empty({M, 1}, c_prev.options());
  if (grad_through_ops && flush) g_flush = at::empty({M, 1}, c_prev.options());
  auto ga = rows<T>(gates), tcr = rows<T>(tc), cp = rows<T>(c_prev), hp = rows<T>(h_prev);
  auto fl = rows<T>(flush), zi = rows<T>(z_in), gh = rows<T>(g_h), gc = rows<T>(g_c);
  auto d = rows<T>(ds), gcp = rows<T>(g_c_prev), ca = rows<T>(carry), gzi = rows<T>(g_zin);
  auto gfl = rows<T>(g_flush), gz = rows<T>(g_z), st = rows<T>(norm_stats), cn = rows<T>(norm_c);
  const T* gain = norm_gain ? norm_gain->data_ptr<T>() : nullptr;
  const T a = static_cast<T>(slope);
  // per row: the masks
  auto masks = [&](int64_t r, T& update, T& copy, T& act) {
    if (first) {
      update = 0;
      copy = 0;
      act = 1;
      return;
    }
    row_masks(fl ? fl[r] : static_cast<const T*>(nullptr), zi[r][0], update, copy, act);
  };
  at::parallel_for(0, M, grain<T>(G), [&](int64_t b, int64_t e) {
    std::vector<T> g_ct(H);
    for (int64_t r = b; r < e; ++r) {
      const T* gt = ga[r];
      const T *i = gt, *f = gt + H, *o = gt + 2 * H, *g = gt + 3 * H;
      const T *t = tcr[r], *c0 = cp[r], *dh = gh[r], *dc = gc[r];
      T* dsr = d[r];
      T *d_i = dsr, *d_f = dsr + H, *d_o = dsr + 2 * H, *d_g = dsr + 3 * H;
      T update, copy, act;
      masks(r, update, copy, act);
      // d o, and d c_t through tc
      for (int64_t j = 0; j < H; ++j) {
        const T gah = first ? dh[j] : dh[j] * act;
        d_o[j] = (gah * t[j]) * (o[j] * (T(1) - o[j]));
        g_ct[j] = (gah * o[j]) * (T(1) - t[j] * t[j]);  // d loss / d (tanh's input)
      }
      if (gain) {  // tanh reads gain * chat + bias: back through the normalisation of c_t
        const T mean = st[r][0], rstd = st[r][1];
        const T* c = cn[r];
        T m1 = 0, m2 = 0;
#pragma omp simd reduction(+ : m1, m2)
        for (int64_t j = 0; j < H; ++j) {
          const T dy = g_ct[j] * gain[j];
          const T chat = (c[j] - mean) * rstd;
          m1 += dy;
          m2 += dy * chat;
        }
        m1 /= T(H);
        m2 /= T(H);
        for (int64_t j = 0; j < H; ++j) {
          const T dy = g_ct[j] * gain[j];
          const T chat = (c[j] - mean) * rstd;
          g_ct[j] = dc[j] + ((dy - m1) - chat * m2) * rstd;
        }
      } else {
        for (int64_t j = 0; j < H; ++j) g_ct[j] = dc[j] + g_ct[j];
      }
      T* gprev = gcp[r];
      if (first) {
        const T keep = fl ? T(1) - fl[r][0] : T(1);
        T sum_flush = 0;
#pragma omp simd reduction(+ : sum_flush)
        for (int64_t j = 0; j < H; ++j) {
          gprev[j] = g_ct[j] * (fl ? f[j] * keep : f[j]);
          T g_keep = g_ct[j] * c0[j];
          if (fl) {
            sum_flush += g_ct[j] * f[j] * c0[j];
            g_keep = g_keep * keep;
          }
          d_f[j] = g_keep * (f[j] * (T(1) - f[j]));
          d_i[j] = (g_ct[j] * g[j]) * (i[j] * (T(1) - i[j]));
          d_g[j] = (g_ct[j] * i[j]) * ((T(1) - g[j] * g[j]) * T(0.5));
        }
        if (gfl) gfl[r][0] = -sum_flush;
      } else {
        const T* h0 = hp[r];
        T* car = ca[r];
        T g_update = 0, g_copy = 0;
#pragma omp simd reduction(+ : g_update, g_copy)
        for (int64_t j = 0; j < H; ++j) {
          gprev[j] = g_ct[j] * (update * f[j] + copy);
          d_f[j] = ((g_ct[j] * update) * c0[j]) * (f[j] * (T(1) - f[j]));
          const T gca = g_ct[j] * act;
          d_i[j] = (gca * g[j]) * (i[j] * (T(1) - i[j]));
          d_g[j] = (gca * i[j]) * ((T(1) - g[j] * g[j]) * T(0.5));
          car[j] = copy * dh[j];
          if (grad_through_ops) {
            g_update += g_ct[j] * f[j] * c0[j];
            g_copy += dh[j] * (h0[j] - o[j] * t[j]) + g_ct[j] * (c0[j] - i[j] * g[j]);
          }
        }
        if (grad_through_ops) {
          T gz_in = g_update - g_copy;
          if (fl) {
            gz_in = gz_in * (T(1) - fl[r][0]);
            const T zin = zi[r][0];
            gfl[r][0] = -(g_update * zin + g_copy * (T(1) - zin));
          }
          gzi[r][0] = gz_in;
        }
      }
      if (G > 4 * H && grad != 0) {
        T v = 0;
        if (gz) {
          const T x = gt[4 * H];
          bool inside;
          if (grad == 1) {
            inside = std::abs(x * a) < T(1);
          } else {
            const T y = (x * a + T(1)) * T(0.5);
            inside = y >= T(0) && y <= T(1);
          }
          v = inside ? gz[r][0] * (a * T(0.5)) : T(0);
        }
        dsr[4 * H] = v;
      }
    }
  });
  if (gain) {  // the gain's and bias's gradients: sums over rows, in parallel over columns
    T* gg = norm_g_gain->data_ptr<T>();
    T* gb = norm_g_bias->data_ptr<T>();
    at::parallel_for(0, H, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = 0; r < M; ++r) {
        T update, copy, act;
        masks(r, update, copy, act);
        const T *o = ga[r] + 2 * H, *t = tcr[r], *dh = gh[r], *c = cn[r];
        const T mean = st[r][0], rstd = st[r][1];
        for (int64_t j = b; j < e; ++j) {
          const T gah = first ? dh[j] : dh[j] * act;
          const T dy = (gah * o[j]) * (T(1) - t[j] * t[j]);
          gg[j] += dy * ((c[j] - mean) * rstd);
          gb[j] += dy;
        }
      }
    });
  }
  return {g_c_prev, carry, g_zin, g_flush};
}

template <typename T>
std::vector<OptTensor> preact_backward_impl(const Tensor& ds, const std::vector<Tensor>& xhat,
                                            const Tensor& stats, const Tensor& gains,
                                            const std::vector<OptTensor>& gates,
                                            const Tensor& g_gains,
                                            const std::vector<Tensor>& g_P) {
  const int64_t M = ds.size(0), G = ds.size(1), n = static_cast<int64_t>(xhat.size());
  std::vector<OptTensor> g_gates(n);
  std::vector<Rows<T>> xh(n), gt(n), gp(n), gg(n);
  for (int64_t k = 0; k < n; ++k) {
    xh[k] = rows<T>(xhat[k]);
    gt[k] = rows<T>(gates[k]);
    gp[k] = rows<T>(g_P[k]);
    if (gates[k]) {
      g_gates[k] = at::empty({M, 1}, ds.options());
      gg[k] = rows<T>(g_gates[k]);
    }
  }
  auto d = rows<T>(ds), st = rows<T>(stats), gn = rows<T>(gains), ggn = rows<T>(g_gains);
  at::parallel_for(0, M, grain<T>(n * G), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* dsr = d[r];
      for (int64_t k = 0; k < n; ++k) {
        const T* x = xh[k][r];
        const T* w = gn[k];
        const T gate = gt[k] ? gt[k][r][0] : T(1);
        const T rstd = st[r][k];
        T m1 = 0, m2 = 0, g_gate = 0;
#pragma omp simd reduction(+ : m1, m2, g_gate)
        for (int64_t j = 0; j < G; ++j) {
          const T dy = (gt[k] ? dsr[j] * gate : dsr[j]) * w[j];
          m1 += dy;
          m2 += dy * x[j];
          g_gate += (dsr[j] * w[j]) * x[j];
        }
        m1 /= T(G);
        m2 /= T(G);
        T* out = gp[k][r];
        for (int64_t j = 0; j < G; ++j) {
          const T dy = (gt[k] ? dsr[j] * gate : dsr[j]) * w[j];
          out[j] = ((dy - m1) - x[j] * m2) * rstd;
        }
        if (gt[k]) gg[k][r][0] = g_gate;
      }
    }
  });
  at::parallel_for(0, G, 64, [&](int64_t b, int64_t e) {
    for (int64_t k = 0; k < n; ++k) {
      T* acc = ggn[k];
      for (int64_t r = 0; r < M; ++r) {
        const T* dsr = d[r];
        const T* x = xh[k][r];
        const T gate = gt[k] ? gt[k][r][0] : T(1);
        for (int64_t j = b; j < e; ++j) acc[j] += (gt[k] ? dsr[j] * gate : dsr[j]) * x[j];
      }
    }
  });
  return g_gates;
}

// After the backward multiply: the gradients of the step's inputs, from gx (per input block:
// recurrent, top-down, bottom-up, those the layer has, each (M, H); or one (M, n H) tensor). `gated`: the inputs were
// gated before the multiply (no layer norm), so the gates' gradients are sums here; with layer
// norm they come from preact_backward (g_gate_td, g_gate_ih). Writes g_h_self, adds to
// g_h_above, g_h_below and g_z_below; returns d loss / d z_{t-1} of this layer, or None.
template <typename T>
OptTensor scatter_impl(const std::vector<Tensor>& gx, const OptTensor& carry,
                       const Tensor& g_h_self, const OptTensor& g_h_above,
                       const OptTensor& h_above, const OptTensor& g_h_below,
                       const OptTensor& h_below, const OptTensor& z_prev, const OptTensor& z_in,
                       const OptTensor& g_z_below, const OptTensor& g_zin,
                       const OptTensor& g_flush, const OptTensor& g_gate_td,
                       const OptTensor& g_gate_ih, bool gated) {
  const int64_t M = g_h_self.size(0), H = g_h_self.size(1);
  const bool above = g_h_above.has_value(), below = g_h_below.has_value();
  OptTensor g_zprev;
  if (above || g_flush) g_zprev = at::empty({M, 1}, g_h_self.options());
  Rows<T> x0 = rows<T>(gx[0]), xa, xb;
  if (gx.size() == 1) {  // one (M, n H) tensor: the blocks are its column ranges
    xa = Rows<T>{x0.p + H, x0.s};
    xb = Rows<T>{x0.p + (above ? 2 : 1) * H, x0.s};
  } else {
    if (above) xa = rows<T>(gx[1]);
    if (below) xb = rows<T>(gx[above ? 2 : 1]);
  }
  auto ca = rows<T>(carry), gs = rows<T>(g_h_self), ga = rows<T>(g_h_above), ha = rows<T>(h_above);
  auto gb = rows<T>(g_h_below), hb = rows<T>(h_below), zp = rows<T>(z_prev), zi = rows<T>(z_in);
  auto gzb = rows<T>(g_z_below), gzi = rows<T>(g_zin), gfl = rows<T>(g_flush);
  auto gtd = rows<T>(g_gate_td), gih = rows<T>(g_gate_ih), gzp = rows<T>(g_zprev);
  at::parallel_for(0, M, grain<T>(3 * H), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* g0 = x0[r];
      T* out = gs[r];
      if (ca) {
        const T* c = ca[r];
        for (int64_t j = 0; j < H; ++j) out[j] = g0[j] + c[j];
      } else {
        std::copy(g0, g0 + H, out);
      }
      T zgrad = gfl ? gfl[r][0] : T(0);
      if (above) {
        const T* g = xa[r];
        T* acc = ga[r];
        if (gated) {
          const T z = zp[r][0];
          const T* h = ha[r];
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < H; ++j) {
            acc[j] += g[j] * z;
            sum += g[j] * h[j];
          }
          zgrad += sum;
        } else {
          for (int64_t j = 0; j < H; ++j) acc[j] += g[j];
          if (gtd) zgrad += gtd[r][0];
        }
      }
      if (gzp) gzp[r][0] = zgrad;
      if (below) {
        const T* g = xb[r];
        T* acc = gb[r];
        T part = 0;
        if (gated && zi) {
          const T z = zi[r][0];
          const T* h = hb[r];
#pragma omp simd reduction(+ : part)
          for (int64_t j = 0; j < H; ++j) {
            acc[j] += g[j] * z;
            part += g[j] * h[j];
          }
        } else {
          for (int64_t j = 0; j < H; ++j) acc[j] += g[j];
          if (gih) part = gih[r][0];
        }
        if (gzb) gzb[r][0] += gzi ? part + gzi[r][0] : part;
      }
    }
  });
  return g_zprev;
}

// ------------------------------------------------------------------------- typed entry points
#define HMRNN_DISPATCH(tensor, ...)                                                 \
  if ((tensor).scalar_type() == at::kFloat) {                                       \
    using scalar_t = float;                                                         \
    __VA_ARGS__;                                                                    \
  } else {                                                                          \
    TORCH_CHECK((tensor).scalar_type() == at::kDouble, "native cell: float or double"); \
    using scalar_t = double;                                                        \
    __VA_ARGS__;                                                                    \
  }

void gather(Tensor X, Tensor h_prev, OptTensor above, OptTensor z_above, OptTensor below,
            OptTensor z_below) {
  HMRNN_DISPATCH(X, gather_impl<scalar_t>(X, h_prev, above, z_above, below, z_below));
}

void preact_forward(std::vector<Tensor> P, Tensor gains, std::vector<OptTensor> gates,
                    Tensor add, Tensor s, std::vector<Tensor> xhat, Tensor stats) {
  HMRNN_DISPATCH(s, preact_forward_impl<scalar_t>(P, gains, gates, add, s, xhat, stats));
}

void cell_forward(Tensor s, Tensor c_prev, Tensor h_prev, OptTensor flush, OptTensor z_in,
                  Tensor gates, Tensor c_new, Tensor tc, Tensor h_new, OptTensor z_out,
                  int64_t sample, double slope, OptTensor norm_gain, OptTensor norm_bias,
                  OptTensor norm_stats) {
  HMRNN_DISPATCH(s, cell_forward_impl<scalar_t>(s, c_prev, h_prev, flush, z_in, gates, c_new,
                                                tc, h_new, z_out, sample, slope, norm_gain,
                                                norm_bias, norm_stats));
}

std::tuple<Tensor, OptTensor, OptTensor, OptTensor> cell_backward(
    Tensor gates, Tensor tc, Tensor c_prev, Tensor h_prev, OptTensor flush, OptTensor z_in,
    Tensor g_h, Tensor g_c, Tensor ds, bool grad_through_ops, int64_t grad, double slope,
    OptTensor g_z, OptTensor norm_gain, OptTensor norm_stats, OptTensor norm_c,
    OptTensor norm_g_gain, OptTensor norm_g_bias) {
  HMRNN_DISPATCH(gates, return cell_backward_impl<scalar_t>(
                            gates, tc, c_prev, h_prev, flush, z_in, g_h, g_c, ds,
                            grad_through_ops, grad, slope, g_z, norm_gain, norm_stats, norm_c,
                            norm_g_gain, norm_g_bias));
}

std::vector<OptTensor> preact_backward(Tensor ds, std::vector<Tensor> xhat, Tensor stats,
                                       Tensor gains, std::vector<OptTensor> gates,
                                       Tensor g_gains, std::vector<Tensor> g_P) {
  HMRNN_DISPATCH(ds, return preact_backward_impl<scalar_t>(ds, xhat, stats, gains, gates,
                                                           g_gains, g_P));
}

void recompute(std::vector<Tensor> xhat, OptTensor gains, std::vector<OptTensor> gates,
               OptTensor add, OptTensor acts, Tensor c, Tensor stats_c, Tensor gain_c,
               Tensor bias_c, Tensor tc) {
  HMRNN_DISPATCH(c, recompute_impl<scalar_t>(xhat, gains, gates, add, acts, c, stats_c, gain_c,
                                             bias_c, tc));
}

OptTensor scatter(std::vector<Tensor> gx, OptTensor carry, Tensor g_h_self, OptTensor g_h_above,
                  OptTensor h_above, OptTensor g_h_below, OptTensor h_below, OptTensor z_prev,
                  OptTensor z_in, OptTensor g_z_below, OptTensor g_zin, OptTensor g_flush,
                  OptTensor g_gate_td, OptTensor g_gate_ih, bool gated) {
  HMRNN_DISPATCH(g_h_self, return scatter_impl<scalar_t>(gx, carry, g_h_self, g_h_above, h_above,
                                                         g_h_below, h_below, z_prev, z_in,
                                                         g_z_below, g_zin, g_flush, g_gate_td,
                                                         g_gate_ih, gated));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather", &gather);
  m.def("preact_forward", &preact_forward);
  m.def("cell_forward", &cell_forward);
  m.def("cell_backward", &cell_backward);
  m.def("preact_backward", &preact_backward);
  m.def("scatter", &scatter);
  m.def("recompute", &recompute);
}
