#include "topk_cross_attn_cpu.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <vector>

#include "cpu_simd.h"

namespace faseg {

namespace {

int64_t isqrt(int64_t v) {
  if (v <= 0) return 0;
  int64_t r = static_cast<int64_t>(std::sqrt(static_cast<double>(v)));
  while (r * r > v) --r;
  while ((r + 1) * (r + 1) <= v) ++r;
  return r;
}

// Ranking order of the contract: larger value first, NaN before any number (torch.sort descending),
// equal values (and NaNs among themselves) by lower index first.
struct RankBefore {
  const double* v;
  bool operator()(int64_t a, int64_t b) const {
    const double va = v[a], vb = v[b];
    const bool na = std::isnan(va), nb = std::isnan(vb);
    if (na != nb) return na;
    if (!na && va != vb) return va > vb;
    return a < b;
  }
};

// Indices of the n first entries of values[0:total] in ranking order, written to out[0:n] in that order.
void top_n(const double* values, int64_t total, int64_t n, std::vector<int64_t>& order, int64_t* out) {
  order.resize(static_cast<size_t>(total));
  std::iota(order.begin(), order.end(), int64_t{0});
  RankBefore before{values};
  if (n < total) std::nth_element(order.begin(), order.begin() + n, order.end(), before);
  std::sort(order.begin(), order.begin() + n, before);
  std::copy(order.begin(), order.begin() + n, out);
}

// Source index and weights of a linear resize from in_size to out_size with align_corners=False, as
// F.interpolate computes them (fp32): src = max(in/out * (dst + 0.5) - 0.5, 0); i0 = trunc(src);
// i1 = min(i0 + 1, in - 1); l1 = src - i0; l0 = 1 - l1.
void linear_resize_table(int64_t in_size, int64_t out_size, std::vector<int64_t>& i0, std::vector<int64_t>& i1,
                         std::vector<float>& l0, std::vector<float>& l1) {
  i0.resize(out_size);
  i1.resize(out_size);
  l0.resize(out_size);
  l1.resize(out_size);
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  for (int64_t d = 0; d < out_size; ++d) {
    if (in_size == out_size) {
      i0[d] = i1[d] = d;
      l0[d] = 1.0f;
      l1[d] = 0.0f;
      continue;
    }
    float src = scale * (static_cast<float>(d) + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int64_t lo = std::min(static_cast<int64_t>(src), in_size - 1);
    i0[d] = lo;
    i1[d] = lo + (lo < in_size - 1 ? 1 : 0);
    l1[d] = std::min(std::max(src - static_cast<float>(lo), 0.0f), 1.0f);
    l0[d] = 1.0f - l1[d];
  }
}

// s plus the products of the tail i..n-1 of a dot, one by one.
inline float dot_tail(float s, const float* a, const float* b, int64_t i, int64_t n) {
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// The end of dot: the lanes added pairwise, then the tail.
inline float dot_finish(const float acc[8], const float* a, const float* b, int64_t i, int64_t n) {
  return dot_tail(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])), a, b, i, n);
}

// Sum of a[i] * b[i] over eight lanes (lane l takes i = l mod 8 of the full blocks of 8), the lanes
// added pairwise, then the tail. dot_rows_avx2 reproduces this order exactly.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  return dot_finish(acc, a, b, i, n);
}

// out[j] = dot(a, b + j * ldb, n) for j < count: one row a against `count` rows of b.
void dot_rows_portable(const float* a, const float* b, int64_t ldb, int64_t count, int64_t n, float* out) {
  for (int64_t j = 0; j < count; ++j) out[j] = dot(a, b + j * ldb, n);
}

#if FASEG_HAVE_AVX2_PATH
// dot_rows with the eight lanes of dot in one AVX2 register (separate multiply and add, as in dot), four
// rows of b at a time so that four independent accumulators hide the add latency and share the loads of a.
__attribute__((target("avx2"))) void dot_rows_avx2(const float* a, const float* b, int64_t ldb, int64_t count,
                                                   int64_t n, float* out) {
  const int64_t blocks_end = n - n % 8;
  alignas(32) float acc[8];
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float* b0 = b + j * ldb;
    const float* b1 = b0 + ldb;
    const float* b2 = b1 + ldb;
    const float* b3 = b2 + ldb;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks_end; i += 8) {
      const __m256 va = _mm256_loadu_ps(a + i);
      acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(va, _mm256_loadu_ps(b0 + i)));
      acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(va, _mm256_loadu_ps(b1 + i)));
      acc2 = _mm256_add_ps(acc2, _mm256_mul_ps(va, _mm256_loadu_ps(b2 + i)));
      acc3 = _mm256_add_ps(acc3, _mm256_mul_ps(va, _mm256_loadu_ps(b3 + i)));
    }
    // The pairwise lane sums of dot_finish for the four rows at once: hadd adds neighbouring lanes, so
    // after two rounds the lower half holds (l0+l1)+(l2+l3) and the upper half (l4+l5)+(l6+l7) of each row
    // (float addition is commutative, so the operand order inside a pair does not change the bits).
    const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(acc0, acc1), _mm256_hadd_ps(acc2, acc3));
    _mm_storeu_ps(out + j, _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1)));
    if (blocks_end < n) {
      out[j] = dot_tail(out[j], a, b0, blocks_end, n);
      out[j + 1] = dot_tail(out[j + 1], a, b1, blocks_end, n);
      out[j + 2] = dot_tail(out[j + 2], a, b2, blocks_end, n);
      out[j + 3] = dot_tail(out[j + 3], a, b3, blocks_end, n);
    }
  }
  for (; j < count; ++j) {
    const float* bj = b + j * ldb;
    __m256 acc0 = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks_end; i += 8) {
      acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(bj + i)));
    }
    _mm256_store_ps(acc, acc0);
    out[j] = dot_finish(acc, a, bj, blocks_end, n);
  }
}
#endif

using DotRowsFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float*);

// The AVX2 version when use_avx2_kernels() (cpu_simd.h), else the portable one.
DotRowsFn pick_dot_rows() {
#if FASEG_HAVE_AVX2_PATH
  if (use_avx2_kernels()) return dot_rows_avx2;
#endif
  return dot_rows_portable;
}

// out[i, j] = dot(a[i, 0:K], b[j, 0:K]) + bias[j] for i < rows, j < cols (bias may be null).
void gemm_abt(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* out, int64_t ldo,
              int64_t rows, int64_t cols, int64_t inner, const ParallelFor& pf) {
  const DotRowsFn dot_rows = pick_dot_rows();
  const int64_t row_cost = cols * inner + 1;
  const int64_t grain = row_cost >= 32768 ? 1 : 32768 / row_cost;
  parallel_for(pf, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* oi = out + i * ldo;
      dot_rows(a + i * lda, b, ldb, cols, inner, oi);
      for (int64_t j = 0; j < cols; ++j) oi[j] += bias ? bias[j] : 0.0f;
    }
  });
}

// Same as gemm_abt but bias indexed by the row: out[i, j] = dot(a_i, b_j) + bias[i].
void gemm_abt_row_bias(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* out,
                       int64_t ldo, int64_t rows, int64_t cols, int64_t inner, const ParallelFor& pf) {
  const DotRowsFn dot_rows = pick_dot_rows();
  const int64_t row_cost = cols * inner + 1;
  const int64_t grain = row_cost >= 32768 ? 1 : 32768 / row_cost;
  parallel_for(pf, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* oi = out + i * ldo;
      const float bi = bias ? bias[i] : 0.0f;
      dot_rows(a + i * lda, b, ldb, cols, inner, oi);
      for (int64_t j = 0; j < cols; ++j) oi[j] += bi;
    }
  });
}

}  // namespace

std::string topk_cross_attn_plan(const TopKCrossAttnDims& d, TopKCrossAttnPlan* plan) {
  std::ostringstream msg;
  if (d.num_heads < 1 || d.channels < 1 || d.channels % d.num_heads != 0) {
    msg << "channels C = " << d.channels << " must be a positive multiple of num_heads = " << d.num_heads;
    return msg.str();
  }
  if (d.divisor < 1) {
    msg << "divisor must be >= 1, got " << d.divisor;
    return msg.str();
  }
  if (d.mode != kTopKWindow && d.mode != kTopKBilinear) {
    msg << "mode must be 0 (window) or 1 (bilinear), got " << d.mode;
    return msg.str();
  }
  if (d.num_tokens < 1) {
    msg << "coarse_attn has S0 = " << d.num_tokens << " tokens; need S0 >= 1";
    return msg.str();
  }
  if (d.hr_h < 1 || d.hr_w < 1) {
    msg << "feat has an empty spatial map " << d.hr_h << "x" << d.hr_w;
    return msg.str();
  }
  int64_t h0 = d.level0_h, w0 = d.level0_w, window = 0;
  if (h0 == 0 && w0 == 0) {
    // Derive the 1/32 map from H3, W3 and S0.
    window = isqrt((d.hr_h * d.hr_w) / d.num_tokens);
    if (window < 1 || d.hr_h % window != 0 || d.hr_w % window != 0 ||
        (d.hr_h / window) * (d.hr_w / window) != d.num_tokens) {
      msg << "cannot derive the 1/32 map: the high-resolution map " << d.hr_h << "x" << d.hr_w
          << " is not an exact window x window multiple of a map with S0 = " << d.num_tokens
          << " tokens; input height and width must be multiples of 32";
      return msg.str();
    }
    h0 = d.hr_h / window;
    w0 = d.hr_w / window;
  } else {
    if (h0 < 1 || w0 < 1) {
      msg << "level0_h and level0_w must both be >= 1 (or both 0 to derive them), got " << h0 << ", " << w0;
      return msg.str();
    }
    if (h0 * w0 != d.num_tokens) {
      msg << "coarse_attn has S0 = " << d.num_tokens << " tokens but level0_h * level0_w = " << h0 << " * " << w0
          << " = " << h0 * w0;
      return msg.str();
    }
    window = isqrt((d.hr_h * d.hr_w) / (h0 * w0));
    if (window < 1 || d.hr_h != window * h0 || d.hr_w != window * w0) {
      msg << "HRCA needs the high-resolution map " << d.hr_h << "x" << d.hr_w
          << " to be an exact multiple of the 1/32 map " << h0 << "x" << w0
          << "; input height and width must be multiples of 32";
      return msg.str();
    }
  }
  const int64_t k = d.num_tokens / d.divisor;
  if (k < 1) {
    msg << "HRCA selects S0 // divisor = " << d.num_tokens << " // " << d.divisor
        << " = 0 windows; the input is too small";
    return msg.str();
  }
  plan->level0_h = h0;
  plan->level0_w = w0;
  plan->window = window;
  plan->k = k;
  plan->num_memory = k * window * window;
  plan->head_dim = d.channels / d.num_heads;
  return "";
}

void topk_cross_attn_select_cpu(const TopKCrossAttnDims& d, const TopKCrossAttnPlan& plan,
                                const float* coarse_attn_n, int64_t* pixels) {
  const int64_t S0 = d.num_tokens, Q = d.num_queries;
  const int64_t h0 = plan.level0_h, w0 = plan.level0_w, ws = plan.window;
  const int64_t H3 = d.hr_h, W3 = d.hr_w;
  // score[s] = sum_q coarse_attn[q, s], accumulated in fp64 in increasing q.
  std::vector<double> score(static_cast<size_t>(S0), 0.0);
  for (int64_t q = 0; q < Q; ++q) {
    const float* row = coarse_attn_n + q * S0;
    for (int64_t s = 0; s < S0; ++s) score[s] += static_cast<double>(row[s]);
  }
  std::vector<int64_t> order;
  if (d.mode == kTopKWindow) {
    std::vector<int64_t> tokens(static_cast<size_t>(plan.k));
    top_n(score.data(), S0, plan.k, order, tokens.data());
    int64_t j = 0;
    for (int64_t t : tokens) {
      const int64_t r = t / w0, c = t % w0;
      for (int64_t dy = 0; dy < ws; ++dy)
        for (int64_t dx = 0; dx < ws; ++dx) pixels[j++] = (r * ws + dy) * W3 + c * ws + dx;
    }
    return;
  }
  // Bilinear: upsample the score map to H3 x W3 (F.interpolate weights, evaluated in fp64 as
  // l0y * (l0x * s[y0, x0] + l1x * s[y0, x1]) + l1y * (l0x * s[y1, x0] + l1x * s[y1, x1])).
  std::vector<int64_t> y0, y1, x0, x1;
  std::vector<float> ly0, ly1, lx0, lx1;
  linear_resize_table(h0, H3, y0, y1, ly0, ly1);
  linear_resize_table(w0, W3, x0, x1, lx0, lx1);
  std::vector<double> up(static_cast<size_t>(H3 * W3));
  for (int64_t y = 0; y < H3; ++y) {
    const double* r0 = score.data() + y0[y] * w0;
    const double* r1 = score.data() + y1[y] * w0;
    const double a0 = ly0[y], a1 = ly1[y];
    for (int64_t x = 0; x < W3; ++x) {
      const double b0 = lx0[x], b1 = lx1[x];
      up[y * W3 + x] = a0 * (b0 * r0[x0[x]] + b1 * r0[x1[x]]) + a1 * (b0 * r1[x0[x]] + b1 * r1[x1[x]]);
    }
  }
  top_n(up.data(), H3 * W3, plan.num_memory, order, pixels);
}

void topk_cross_attn_forward_cpu(const TopKCrossAttnDims& d, const TopKCrossAttnPlan& plan, const float* query,
                                 const float* feat, const float* pos, const float* coarse_attn,
                                 const float* in_proj_weight, const float* in_proj_bias,
                                 const float* out_proj_weight, const float* out_proj_bias, float* output,
                                 const ParallelFor& pf) {
  const int64_t Q = d.num_queries, C = d.channels, HW = d.hr_h * d.hr_w, S0 = d.num_tokens;
  const int64_t Nk = plan.num_memory, Nh = d.num_heads, Dh = plan.head_dim;
  if (Q == 0) return;
  const float* w_q = in_proj_weight;
  const float* w_k = in_proj_weight + C * C;
  const float* w_v = in_proj_weight + 2 * C * C;
  const float* b_q = in_proj_bias;
  const float* b_k = in_proj_bias ? in_proj_bias + C : nullptr;
  const float* b_v = in_proj_bias ? in_proj_bias + 2 * C : nullptr;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh)));

  std::vector<int64_t> pixels(static_cast<size_t>(Nk));
  std::vector<float> mem(static_cast<size_t>(Nk * C));      // [Nk, C] selected features
  std::vector<float> key_in(static_cast<size_t>(Nk * C));   // [Nk, C] selected features + PE
  std::vector<float> q_proj(static_cast<size_t>(Q * C));    // [Q, C]
  std::vector<float> k_proj(static_cast<size_t>(Nk * C));   // [Nk, C]
  std::vector<float> v_projT(static_cast<size_t>(C * Nk));  // [C, Nk]
  std::vector<float> context(static_cast<size_t>(Q * C));   // [Q, C] attention output before out_proj

  for (int64_t n = 0; n < d.batch; ++n) {
    const float* feat_n = feat + n * C * HW;
    const float* pos_n = pos + n * C * HW;
    topk_cross_attn_select_cpu(d, plan, coarse_attn + n * Q * S0, pixels.data());

    // Gather the selected pixels into token-major memory.
    parallel_for(pf, Nk, 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = 0; c < C; ++c) {
        const float* fc = feat_n + c * HW;
        const float* pc = pos_n + c * HW;
        for (int64_t j = begin; j < end; ++j) {
          const float f = fc[pixels[j]];
          mem[j * C + c] = f;
          key_in[j * C + c] = f + pc[pixels[j]];
        }
      }
    });

    // Projections: q = query W_q^T + b_q, k = (mem + pos) W_k^T + b_k, v^T = W_v mem^T + b_v.
    gemm_abt(query + n * Q * C, C, w_q, C, b_q, q_proj.data(), C, Q, C, C, pf);
    gemm_abt(key_in.data(), C, w_k, C, b_k, k_proj.data(), C, Nk, C, C, pf);
    gemm_abt_row_bias(w_v, C, mem.data(), C, b_v, v_projT.data(), Nk, C, Nk, C, pf);

    // Attention per (query, head): softmax(q k^T * scale) v, fp32 accumulation.
    const DotRowsFn dot_rows = pick_dot_rows();
    parallel_for(pf, Q * Nh, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> prob(static_cast<size_t>(Nk));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t i = item / Nh, h = item % Nh;
        const float* qi = q_proj.data() + i * C + h * Dh;
        float mx = -INFINITY;
        dot_rows(qi, k_proj.data() + h * Dh, C, Nk, Dh, prob.data());
        for (int64_t j = 0; j < Nk; ++j) {
          prob[j] *= scale;
          mx = std::max(mx, prob[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < Nk; ++j) {
          prob[j] = std::exp(prob[j] - mx);
          sum += prob[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = 0; j < Nk; ++j) prob[j] *= inv;
        float* ctx = context.data() + i * C + h * Dh;
        dot_rows(prob.data(), v_projT.data() + h * Dh * Nk, Nk, Dh, Nk, ctx);
      }
    });

    gemm_abt(context.data(), C, out_proj_weight, C, out_proj_bias, output + n * Q * C, C, Q, C, C, pf);
  }
}

}  // namespace faseg
