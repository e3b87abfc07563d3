// Multi-scale deformable attention, CPU reference kernel (fp32).
//
// Contract: docs/plugin_contract.md, op FASegMSDeformAttn_TRT (same I/O as NVIDIA's
// MultiscaleDeformableAttnPlugin_TRT v2). Plain pointers and sizes only, all tensors dense row-major:
//   value              [N, S, M, D]        float
//   spatial_shapes     [L, 2]              int32, (H_l, W_l)
//   level_start_index  [L]                 int32, exclusive prefix sum of H_l*W_l
//   sampling_locations [N, Lq, M, L, P, 2] float, (x, y) normalised to [0, 1]
//   attention_weights  [N, Lq, M, L, P]    float
//   output             [N, Lq, M, D]       float
#pragma once

#include <cstdint>
#include <string>

#include "cpu_parallel.h"

namespace faseg {

struct MSDeformAttnDims {
  int64_t batch = 0;        // N
  int64_t num_value = 0;    // S = sum_l H_l * W_l
  int64_t num_heads = 0;    // M
  int64_t head_dim = 0;     // D
  int64_t num_levels = 0;   // L
  int64_t num_queries = 0;  // Lq
  int64_t num_points = 0;   // P
};

// Checks the level tables (host memory) against dims: H_l, W_l >= 1, level_start_index equal to the
// exclusive prefix sum of H_l*W_l, and the sum equal to S. Returns "" when valid, else a message.
std::string ms_deform_attn_check_levels(const MSDeformAttnDims& dims, const int32_t* spatial_shapes,
                                        const int32_t* level_start_index);

// output[n, q, m, :] = sum_{l, p} attention_weights[n, q, m, l, p] *
//                      bilinear(value level l, head m; x * W_l - 0.5, y * H_l - 0.5)
// where a bilinear neighbour outside [0, W_l - 1] x [0, H_l - 1] contributes 0 (grid_sample with
// padding_mode="zeros", align_corners=False) and a non-finite location contributes 0.
// The level tables must have passed ms_deform_attn_check_levels. Work is split over N * Lq.
void ms_deform_attn_forward_cpu(const MSDeformAttnDims& dims, const float* value, const int32_t* spatial_shapes,
                                const int32_t* level_start_index, const float* sampling_locations,
                                const float* attention_weights, float* output, const ParallelFor& pf = {});

}  // namespace faseg
