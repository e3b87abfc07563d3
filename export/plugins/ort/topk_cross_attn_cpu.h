// HRCA top-k cross-attention, CPU reference kernel (fp32 tensors, fp32 accumulation; fp64 ranking).
//
// Contract: docs/plugin_contract.md, op FASegTopKCrossAttn_TRT. Semantics follow
// topk_cross_attention_reference in model/ops/hrca.py. Plain pointers and sizes only, dense row-major:
//   query           [N, Q, C]      content + static query PE, already summed
//   feat, pos       [N, C, H3, W3] 1/4-resolution features and their positional encoding
//   coarse_attn     [N, Q, S0]     head-averaged 1/32 cross-attention, S0 = level0_h * level0_w
//   in_proj_weight  [3C, C]        rows [W_q; W_k; W_v];  in_proj_bias [3C]
//   out_proj_weight [C, C];        out_proj_bias [C]
//   output          [N, Q, C]
#pragma once

#include <cstdint>
#include <string>

#include "cpu_parallel.h"

namespace faseg {

enum TopKCrossAttnMode : int64_t { kTopKWindow = 0, kTopKBilinear = 1 };

// Sizes read from the input tensors plus the op attributes.
struct TopKCrossAttnDims {
  int64_t batch = 0;        // N
  int64_t num_queries = 0;  // Q
  int64_t channels = 0;     // C
  int64_t hr_h = 0;         // H3
  int64_t hr_w = 0;         // W3
  int64_t num_tokens = 0;   // S0 = coarse_attn.shape[2]
  // attributes
  int64_t num_heads = 0;
  int64_t divisor = 32;
  int64_t mode = kTopKWindow;
  int64_t level0_h = 0;  // 0 together with level0_w = 0: derive both from H3, W3 and S0
  int64_t level0_w = 0;
};

// Quantities derived from TopKCrossAttnDims by topk_cross_attn_plan.
struct TopKCrossAttnPlan {
  int64_t level0_h = 0, level0_w = 0;  // resolved 1/32 map size
  int64_t window = 0;                  // side of the 1/4 patch beneath one 1/32 token
  int64_t k = 0;                       // S0 / divisor selected 1/32 tokens
  int64_t num_memory = 0;              // selected 1/4 pixels: k * window^2 (both modes)
  int64_t head_dim = 0;                // C / num_heads
};

// Validates attributes and geometry and fills plan. Returns "" when valid, else a message.
std::string topk_cross_attn_plan(const TopKCrossAttnDims& dims, TopKCrossAttnPlan* plan);

// Selection for one batch element: writes plan.num_memory flat 1/4-pixel indices (y * W3 + x) into
// pixels, in the order of the reference gather (descending score, ties -> lower index; window mode:
// window by window, pixels row-major inside a window). coarse_attn_n is [Q, S0].
void topk_cross_attn_select_cpu(const TopKCrossAttnDims& dims, const TopKCrossAttnPlan& plan,
                                const float* coarse_attn_n, int64_t* pixels);

// Full op. The plan must come from topk_cross_attn_plan(dims) with an empty message.
void topk_cross_attn_forward_cpu(const TopKCrossAttnDims& dims, const TopKCrossAttnPlan& plan, const float* query,
                                 const float* feat, const float* pos, const float* coarse_attn,
                                 const float* in_proj_weight, const float* in_proj_bias,
                                 const float* out_proj_weight, const float* out_proj_bias, float* output,
                                 const ParallelFor& pf = {});

}  // namespace faseg
