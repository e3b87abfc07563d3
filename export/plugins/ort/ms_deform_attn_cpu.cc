#include "ms_deform_attn_cpu.h"

#include <cmath>
#include <cstring>
#include <sstream>

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

// out[0:D] += w * v[0:D]
inline void axpy(float* out, const float* v, float w, int64_t d) {
  for (int64_t i = 0; i < d; ++i) out[i] += w * v[i];
}

}  // namespace

void ms_deform_attn_forward_cpu(const MSDeformAttnDims& dims, const float* value, const int32_t* spatial_shapes,
                                const int32_t* level_start_index, const float* sampling_locations,
                                const float* attention_weights, float* output, const ParallelFor& pf) {
  const int64_t M = dims.num_heads, D = dims.head_dim, L = dims.num_levels, P = dims.num_points;
  const int64_t Lq = dims.num_queries, S = dims.num_value;
  const int64_t pixel_stride = M * D;  // distance between neighbouring tokens of one head in `value`
  const int64_t items = dims.batch * Lq;
  // ~M*L*P*4*D flops per item; aim for chunks of a few hundred microseconds.
  const int64_t work = M * L * P * D + 1;
  const int64_t grain = work >= 65536 ? 1 : 65536 / work;

  parallel_for(pf, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / Lq;
      float* out_item = output + item * M * D;
      std::memset(out_item, 0, sizeof(float) * static_cast<size_t>(M * D));
      for (int64_t m = 0; m < M; ++m) {
        float* out = out_item + m * D;
        const float* loc = sampling_locations + (item * M + m) * L * P * 2;
        const float* attn = attention_weights + (item * M + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t h = spatial_shapes[2 * l];
          const int64_t w = spatial_shapes[2 * l + 1];
          const float hf = static_cast<float>(h), wf = static_cast<float>(w);
          // value[n, start + y*W + x, m, :]
          const float* vlevel = value + ((n * S + level_start_index[l]) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const float x = loc[(l * P + p) * 2] * wf - 0.5f;
            const float y = loc[(l * P + p) * 2 + 1] * hf - 0.5f;
            const float a = attn[l * P + p];
            // Entirely outside (or NaN): every neighbour is out of the map and contributes 0.
            if (!(x > -1.0f && y > -1.0f && x < wf && y < hf)) continue;
            const float xf = std::floor(x), yf = std::floor(y);
            const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
            const int64_t x1 = x0 + 1, y1 = y0 + 1;
            const float fx = x - xf, fy = y - yf;
            const float gx = 1.0f - fx, gy = 1.0f - fy;
            const bool x0_in = x0 >= 0, x1_in = x1 <= w - 1;
            const bool y0_in = y0 >= 0, y1_in = y1 <= h - 1;
            if (y0_in && x0_in) axpy(out, vlevel + (y0 * w + x0) * pixel_stride, a * (gx * gy), D);
            if (y0_in && x1_in) axpy(out, vlevel + (y0 * w + x1) * pixel_stride, a * (fx * gy), D);
            if (y1_in && x0_in) axpy(out, vlevel + (y1 * w + x0) * pixel_stride, a * (gx * fy), D);
            if (y1_in && x1_in) axpy(out, vlevel + (y1 * w + x1) * pixel_stride, a * (fx * fy), D);
          }
        }
      }
    }
  });
}

}  // namespace faseg
