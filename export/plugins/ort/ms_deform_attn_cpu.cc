#include "ms_deform_attn_cpu.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

// The AVX2 path is compiled per function (target attribute) and chosen at run time, so the library
// itself still targets the baseline ISA (no -march) and runs on any x86-64 CPU.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASEG_HAVE_AVX2_PATH 1
#include <immintrin.h>
#else
#define FASEG_HAVE_AVX2_PATH 0
#endif

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

// One bilinear neighbour of a sample: the neighbour's D-float row of `value` (one head) and its weight,
// attention weight * corner weight.
struct Tap {
  const float* row;
  float weight;
};

// Per-level constants of one call, hoisted out of the per-query loop.
struct Level {
  int64_t h, w;
  float hf, wf;
  int64_t start;  // level_start_index[l]
};

// Writes to `taps` the neighbours of one (query, head)'s samples in the order the sum runs: levels,
// points, then corners (y0,x0), (y0,x1), (y1,x0), (y1,x1). A neighbour outside the map is skipped (it
// contributes 0), and so is a sample entirely outside it or with a NaN coordinate. `loc` and `attn` point
// at the (query, head)'s L*P locations and weights, `vhead` at value[n, 0, m, 0]. Returns the tap count.
int64_t collect_taps(const std::vector<Level>& levels, int64_t P, int64_t pixel_stride, const float* vhead,
                     const float* loc, const float* attn, Tap* taps) {
  int64_t count = 0;
  for (size_t l = 0; l < levels.size(); ++l) {
    const Level& lv = levels[l];
    const float* vlevel = vhead + lv.start * pixel_stride;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t k = static_cast<int64_t>(l) * P + p;
      const float x = loc[2 * k] * lv.wf - 0.5f;
      const float y = loc[2 * k + 1] * lv.hf - 0.5f;
      const float a = attn[k];
      if (!(x > -1.0f && y > -1.0f && x < lv.wf && y < lv.hf)) continue;
      const float xf = std::floor(x), yf = std::floor(y);
      const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
      const int64_t x1 = x0 + 1, y1 = y0 + 1;
      const float fx = x - xf, fy = y - yf;
      const float gx = 1.0f - fx, gy = 1.0f - fy;
      const bool x0_in = x0 >= 0, x1_in = x1 <= lv.w - 1;
      const bool y0_in = y0 >= 0, y1_in = y1 <= lv.h - 1;
      if (y0_in && x0_in) taps[count++] = {vlevel + (y0 * lv.w + x0) * pixel_stride, a * (gx * gy)};
      if (y0_in && x1_in) taps[count++] = {vlevel + (y0 * lv.w + x1) * pixel_stride, a * (fx * gy)};
      if (y1_in && x0_in) taps[count++] = {vlevel + (y1 * lv.w + x0) * pixel_stride, a * (gx * fy)};
      if (y1_in && x1_in) taps[count++] = {vlevel + (y1 * lv.w + x1) * pixel_stride, a * (fx * fy)};
    }
  }
  return count;
}

// The weighted sum of the taps' rows, out[0:D] = sum_t taps[t].weight * taps[t].row[0:D].
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

using AccumulateTaps = void (*)(const Tap*, int64_t, int64_t, float*);

// AVX2 when the CPU has it, unless FASEG_ORT_OPS_PORTABLE=1 (read at every call, so tests can compare the
// two versions in one process); else the portable version.
AccumulateTaps pick_accumulate_taps() {
  const char* portable = std::getenv("FASEG_ORT_OPS_PORTABLE");
  if (portable != nullptr && std::strcmp(portable, "1") == 0) return accumulate_taps_portable;
#if FASEG_HAVE_AVX2_PATH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return accumulate_taps_avx2;
#endif
  return accumulate_taps_portable;
}

}  // namespace

void ms_deform_attn_forward_cpu(const MSDeformAttnDims& dims, const float* value, const int32_t* spatial_shapes,
                                const int32_t* level_start_index, const float* sampling_locations,
                                const float* attention_weights, float* output, const ParallelFor& pf) {
  const int64_t M = dims.num_heads, D = dims.head_dim, L = dims.num_levels, P = dims.num_points;
  const int64_t Lq = dims.num_queries, S = dims.num_value;
  const int64_t pixel_stride = M * D;  // distance between neighbouring tokens of one head in `value`
  const int64_t items = dims.batch * Lq;
  // ~M*L*P*4*D flops per item; aim for chunks of a few hundred microseconds (R50 at 512x512: 256 chunks).
  const int64_t work = M * L * P * D + 1;
  const int64_t grain = work >= 65536 ? 1 : 65536 / work;

  std::vector<Level> levels(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
    levels[l] = {h, w, static_cast<float>(h), static_cast<float>(w), level_start_index[l]};
  }
  const AccumulateTaps accumulate_taps = pick_accumulate_taps();

  parallel_for(pf, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<Tap> taps(static_cast<size_t>(L * P * 4));
    for (int64_t item = begin; item < end; ++item) {
      const float* vbatch = value + (item / Lq) * S * pixel_stride;  // value[n]
      for (int64_t m = 0; m < M; ++m) {
        const int64_t head = item * M + m;
        const int64_t count = collect_taps(levels, P, pixel_stride, vbatch + m * D, sampling_locations + head * L * P * 2,
                                           attention_weights + head * L * P, taps.data());
        accumulate_taps(taps.data(), count, D, output + head * D);
      }
    }
  });
}

}  // namespace faseg
