#include "ms_deform_attn_cpu.h"

#include <cmath>
#include <sstream>
#include <vector>

#include "cpu_simd.h"

namespace faseg {

std::string ms_deform_attn_check_levels(const MSDeformAttnDims& dims, const int32_t* spatial_shapes,
                                        const int32_t* level_start_index) {
  int64_t expected_start = 0;
  for (int64_t l = 0; l < dims.num_levels; ++l) {
    const int64_t h = spatial_shapes[2 * l];
    const int64_t w = spatial_shapes[2 * l + 1];
    if (h < 1 || w < 1) {
      std::ostringstream msg;
      msg << "spatial_shapes[" << l << "] = (" << h << ", " << w << "): every level needs H >= 1 and W >= 1";
      return msg.str();
    }
    if (level_start_index[l] != expected_start) {
      std::ostringstream msg;
      msg << "level_start_index[" << l << "] = " << level_start_index[l] << " but the exclusive prefix sum of "
          << "H*W over spatial_shapes is " << expected_start;
      return msg.str();
    }
    expected_start += h * w;
  }
  if (expected_start != dims.num_value) {
    std::ostringstream msg;
    msg << "value has S = " << dims.num_value << " tokens but spatial_shapes sum to " << expected_start;
    return msg.str();
  }
  return "";
}

namespace {

// The kernel runs in three stages per query (all heads):
//   1. bilinear terms of every sample: floor of the pixel coordinate, the four corner weights (attention
//      weight included) and whether the sample touches the map at all;
//   2. taps: per head, the in-map neighbours (value row, weight) in the order the sum runs;
//   3. the weighted sum of each head's taps.
// Stages 1 and 3 have a portable version and an AVX2 version (chosen at run time); they perform the same
// IEEE float operations in the same order, so both give bit-identical results on any CPU.

// Stage 1 output for the M*L*P samples of one query (index k = (m*L + l)*P + p).
struct BilinearTerms {
  std::vector<int32_t> x0, y0;   // floor of the pixel coordinate (meaningful only when inside)
  std::vector<int32_t> inside;   // nonzero when some neighbour may be on the map (and x, y are not NaN)
  std::vector<float> w00, w01, w10, w11;  // a * corner weight for (y0,x0), (y0,x1), (y1,x0), (y1,x1)

  explicit BilinearTerms(size_t n) : x0(n), y0(n), inside(n), w00(n), w01(n), w10(n), w11(n) {}
};

// Per-call constants. Per level: H, W and level_start_index; per sample k of a query: W_l and H_l of its
// level as floats (so stage 1 runs over all samples of a query without looking levels up).
struct Levels {
  std::vector<int64_t> h, w, start;
  std::vector<float> sample_wf, sample_hf;  // M*L*P entries
};

// Stage 1 for sample k (scalar). Pixel coordinate (x * W - 0.5, y * H - 0.5): grid_sample with
// align_corners=False.
inline void bilinear_term(const Levels& lv, const float* loc, const float* attn, int64_t k, BilinearTerms& t) {
  const float wf = lv.sample_wf[k], hf = lv.sample_hf[k];
  const float x = loc[2 * k] * wf - 0.5f;
  const float y = loc[2 * k + 1] * hf - 0.5f;
  // Entirely outside (or NaN): every neighbour is off the map and contributes 0.
  t.inside[k] = x > -1.0f && y > -1.0f && x < wf && y < hf;
  if (!t.inside[k]) return;
  const float xf = std::floor(x), yf = std::floor(y);
  const float fx = x - xf, fy = y - yf;
  const float gx = 1.0f - fx, gy = 1.0f - fy;
  const float a = attn[k];
  t.x0[k] = static_cast<int32_t>(xf);
  t.y0[k] = static_cast<int32_t>(yf);
  t.w00[k] = a * (gx * gy);
  t.w01[k] = a * (fx * gy);
  t.w10[k] = a * (gx * fy);
  t.w11[k] = a * (fx * fy);
}

void bilinear_terms_portable(const Levels& lv, const float* loc, const float* attn, int64_t n, BilinearTerms& t) {
  for (int64_t k = 0; k < n; ++k) bilinear_term(lv, loc, attn, k, t);
}

#if FASEG_HAVE_AVX2_PATH
// Swaps the middle two 64-bit quarters of v: (a b | c d) -> (a c | b d).
__attribute__((target("avx2"))) inline __m256 swap_middle_quarters(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}

// Stage 1, eight samples at a time: the same operations as bilinear_term (comparisons are ordered, so a
// NaN coordinate is outside; floor and the int conversion of an in-map floor are exact). Values computed
// for samples that are outside are never read.
__attribute__((target("avx2"))) void bilinear_terms_avx2(const Levels& lv, const float* loc, const float* attn,
                                                         int64_t n, BilinearTerms& t) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    // (x, y) pairs of samples k..k+7 -> x and y vectors. shuffle_ps works per 128-bit lane, giving samples
    // (0 1 4 5 | 2 3 6 7); swap_middle_quarters puts them in order.
    const __m256 lo = _mm256_loadu_ps(loc + 2 * k), hi = _mm256_loadu_ps(loc + 2 * k + 8);
    const __m256 lx = swap_middle_quarters(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
    const __m256 ly = swap_middle_quarters(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m256 wf = _mm256_loadu_ps(lv.sample_wf.data() + k), hf = _mm256_loadu_ps(lv.sample_hf.data() + k);
    const __m256 x = _mm256_sub_ps(_mm256_mul_ps(lx, wf), half);
    const __m256 y = _mm256_sub_ps(_mm256_mul_ps(ly, hf), half);
    const __m256 inside = _mm256_and_ps(
        _mm256_and_ps(_mm256_cmp_ps(x, minus_one, _CMP_GT_OQ), _mm256_cmp_ps(y, minus_one, _CMP_GT_OQ)),
        _mm256_and_ps(_mm256_cmp_ps(x, wf, _CMP_LT_OQ), _mm256_cmp_ps(y, hf, _CMP_LT_OQ)));
    const __m256 xf = _mm256_floor_ps(x), yf = _mm256_floor_ps(y);
    const __m256 fx = _mm256_sub_ps(x, xf), fy = _mm256_sub_ps(y, yf);
    const __m256 gx = _mm256_sub_ps(one, fx), gy = _mm256_sub_ps(one, fy);
    const __m256 a = _mm256_loadu_ps(attn + k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.inside.data() + k), _mm256_castps_si256(inside));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.x0.data() + k), _mm256_cvttps_epi32(xf));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.y0.data() + k), _mm256_cvttps_epi32(yf));
    _mm256_storeu_ps(t.w00.data() + k, _mm256_mul_ps(a, _mm256_mul_ps(gx, gy)));
    _mm256_storeu_ps(t.w01.data() + k, _mm256_mul_ps(a, _mm256_mul_ps(fx, gy)));
    _mm256_storeu_ps(t.w10.data() + k, _mm256_mul_ps(a, _mm256_mul_ps(gx, fy)));
    _mm256_storeu_ps(t.w11.data() + k, _mm256_mul_ps(a, _mm256_mul_ps(fx, fy)));
  }
  for (; k < n; ++k) bilinear_term(lv, loc, attn, k, t);
}
#endif

// One in-map neighbour of a sample: its D-float row of `value` (one head) and its weight.
struct Tap {
  const float* row;
  float weight;
};

// Stage 2 for head m: writes the head's taps in the order the sum runs (levels, points, then corners
// (y0,x0), (y0,x1), (y1,x0), (y1,x1)), skipping off-map neighbours. `vhead` points at value[n, 0, m, 0].
// Returns the tap count (at most 4*L*P).
int64_t collect_taps(const Levels& lv, const BilinearTerms& t, int64_t m, int64_t P, int64_t pixel_stride,
                     const float* vhead, Tap* taps) {
  const int64_t L = static_cast<int64_t>(lv.h.size());
  int64_t count = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t h = lv.h[l], w = lv.w[l];
    const float* vlevel = vhead + lv.start[l] * pixel_stride;
    for (int64_t k = (m * L + l) * P, k_end = k + P; k < k_end; ++k) {
      if (!t.inside[k]) continue;
      const int64_t x0 = t.x0[k], y0 = t.y0[k];
      if (x0 >= 0 && y0 >= 0 && x0 + 1 < w && y0 + 1 < h) {  // the common case: all four on the map
        const float* r00 = vlevel + (y0 * w + x0) * pixel_stride;
        const float* r10 = r00 + w * pixel_stride;
        taps[count] = {r00, t.w00[k]};
        taps[count + 1] = {r00 + pixel_stride, t.w01[k]};
        taps[count + 2] = {r10, t.w10[k]};
        taps[count + 3] = {r10 + pixel_stride, t.w11[k]};
        count += 4;
        continue;
      }
      // On a border: only the neighbours on the map.
      const int64_t x1 = x0 + 1, y1 = y0 + 1;
      const bool x0_in = x0 >= 0, x1_in = x1 <= w - 1;
      const bool y0_in = y0 >= 0, y1_in = y1 <= h - 1;
      if (y0_in && x0_in) taps[count++] = {vlevel + (y0 * w + x0) * pixel_stride, t.w00[k]};
      if (y0_in && x1_in) taps[count++] = {vlevel + (y0 * w + x1) * pixel_stride, t.w01[k]};
      if (y1_in && x0_in) taps[count++] = {vlevel + (y1 * w + x0) * pixel_stride, t.w10[k]};
      if (y1_in && x1_in) taps[count++] = {vlevel + (y1 * w + x1) * pixel_stride, t.w11[k]};
    }
  }
  return count;
}

// Stage 3, the weighted sum of one head's taps, out[0:D] = sum_t taps[t].weight * taps[t].row[0:D].
//
// Both versions below compute every output element the same way: start from +0, then in tap order add
// the product weight * row[i], rounded to float before the add (no FMA: the library is built with
// -ffp-contract=off and the AVX2 version uses separate multiply and add). So they give bit-identical
// results, on any CPU, equal to the reference loop that accumulated into a zeroed output.

// Portable version: a scalar axpy per tap into `out` (the compiler vectorises it for the baseline ISA).
void accumulate_taps_portable(const Tap* taps, int64_t count, int64_t d, float* out) {
  for (int64_t i = 0; i < d; ++i) out[i] = 0.0f;
  for (int64_t t = 0; t < count; ++t) {
    const float w = taps[t].weight;
    const float* v = taps[t].row;
    for (int64_t i = 0; i < d; ++i) out[i] += w * v[i];
  }
}

#if FASEG_HAVE_AVX2_PATH
// AVX2 version: blocks of 32 channels stay in four 8-float registers across all taps (D = 32, the usual
// head size, is one block), then blocks of 8, then a scalar tail for D % 8.
__attribute__((target("avx2"))) void accumulate_taps_avx2(const Tap* taps, int64_t count, int64_t d, float* out) {
  int64_t i = 0;
  for (; i + 32 <= d; i += 32) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    for (int64_t t = 0; t < count; ++t) {
      const __m256 w = _mm256_set1_ps(taps[t].weight);
      const float* v = taps[t].row + i;
      acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(w, _mm256_loadu_ps(v)));
      acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(w, _mm256_loadu_ps(v + 8)));
      acc2 = _mm256_add_ps(acc2, _mm256_mul_ps(w, _mm256_loadu_ps(v + 16)));
      acc3 = _mm256_add_ps(acc3, _mm256_mul_ps(w, _mm256_loadu_ps(v + 24)));
    }
    _mm256_storeu_ps(out + i, acc0);
    _mm256_storeu_ps(out + i + 8, acc1);
    _mm256_storeu_ps(out + i + 16, acc2);
    _mm256_storeu_ps(out + i + 24, acc3);
  }
  for (; i + 8 <= d; i += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t t = 0; t < count; ++t) {
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(taps[t].weight), _mm256_loadu_ps(taps[t].row + i)));
    }
    _mm256_storeu_ps(out + i, acc);
  }
  for (; i < d; ++i) {
    float acc = 0.0f;
    for (int64_t t = 0; t < count; ++t) acc += taps[t].weight * taps[t].row[i];
    out[i] = acc;
  }
}
#endif

using BilinearTermsFn = void (*)(const Levels&, const float*, const float*, int64_t, BilinearTerms&);
using AccumulateTapsFn = void (*)(const Tap*, int64_t, int64_t, float*);

struct Kernels {
  BilinearTermsFn bilinear_terms;
  AccumulateTapsFn accumulate_taps;
};

// The AVX2 versions when use_avx2_kernels() (cpu_simd.h), else the portable ones.
Kernels pick_kernels() {
#if FASEG_HAVE_AVX2_PATH
  if (use_avx2_kernels()) return {bilinear_terms_avx2, accumulate_taps_avx2};
#endif
  return {bilinear_terms_portable, accumulate_taps_portable};
}

}  // namespace

void ms_deform_attn_forward_cpu(const MSDeformAttnDims& dims, const float* value, const int32_t* spatial_shapes,
                                const int32_t* level_start_index, const float* sampling_locations,
                                const float* attention_weights, float* output, const ParallelFor& pf) {
  const int64_t M = dims.num_heads, D = dims.head_dim, L = dims.num_levels, P = dims.num_points;
  const int64_t Lq = dims.num_queries, S = dims.num_value;
  const int64_t pixel_stride = M * D;  // distance between neighbouring tokens of one head in `value`
  const int64_t samples = M * L * P;   // per query
  const int64_t items = dims.batch * Lq;
  // ~M*L*P*4*D flops per item; aim for chunks of a few hundred microseconds (R50 at 512x512: 256 chunks).
  const int64_t work = samples * D + 1;
  const int64_t grain = work >= 65536 ? 1 : 65536 / work;

  Levels levels;
  for (int64_t l = 0; l < L; ++l) {
    levels.h.push_back(spatial_shapes[2 * l]);
    levels.w.push_back(spatial_shapes[2 * l + 1]);
    levels.start.push_back(level_start_index[l]);
  }
  for (int64_t k = 0; k < samples; ++k) {
    const int64_t l = (k / P) % L;
    levels.sample_wf.push_back(static_cast<float>(levels.w[l]));
    levels.sample_hf.push_back(static_cast<float>(levels.h[l]));
  }
  const Kernels kernels = pick_kernels();

  parallel_for(pf, items, grain, [&](int64_t begin, int64_t end) {
    BilinearTerms terms(static_cast<size_t>(samples));
    std::vector<Tap> taps(static_cast<size_t>(L * P * 4));
    for (int64_t item = begin; item < end; ++item) {
      const float* vbatch = value + (item / Lq) * S * pixel_stride;  // value[n]
      kernels.bilinear_terms(levels, sampling_locations + item * samples * 2, attention_weights + item * samples,
                             samples, terms);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t count = collect_taps(levels, terms, m, P, pixel_stride, vbatch + m * D, taps.data());
        kernels.accumulate_taps(taps.data(), count, D, output + (item * M + m) * D);
      }
    }
  });
}

}  // namespace faseg
