// HRCA top-k cross-attention: CUDA forward (C ABI).
//
// Provenance: written for FASeg from docs/plugin_contract.md §2 and the PyTorch reference
// topk_cross_attention_reference (model/ops/hrca.py, model/ops/attention.py). FASeg (He et al.,
// "Dynamic Focus-aware Positional Queries for Semantic Segmentation", CVPR 2023) defines the
// operator; no code was taken from its implementation. License: Apache-2.0.
//
// Layouts (dense row-major, all float32):
//   query           [N, Q, C]       content + static query PE, already summed
//   feat, pos       [N, C, H3, W3]  1/4-resolution features and their positional encoding
//   coarse_attn     [N, Q, S0]      head-averaged post-softmax 1/32 cross-attention
//   in_proj_weight  [3C, C]         rows [W_q; W_k; W_v];  in_proj_bias [3C] (may be NULL: zeros)
//   out_proj_weight [C, C];         out_proj_bias [C] (may be NULL: zeros)
//   output          [N, Q, C]
//
// Steps (one pass per launch, all batch elements at once):
//   1. score[n, s] = sum_q coarse_attn[n, q, s] in fp64 (increasing q);
//   2. mode 1 only: bilinear upsampling of the score map to H3 x W3 (fp32 weights, fp64 values,
//      exactly the CPU op's arithmetic);
//   3. exact top-k by radix select on the fp64 values: descending, NaN first, ties -> lower index;
//   4. gather of the selected pixels (features, features + PE) into token-major buffers;
//   5. q/k/v projections (tiled fp32 GEMMs, fp32 accumulation);
//   6. per (n, head, query) online-softmax attention over the selected keys (fp32);
//   7. output projection.
// The selection (steps 1-3) is bit-exact with the ONNX Runtime CPU op; the numeric part differs
// only by fp32 summation order.
//
// Workspace: faseg_topk_cross_attn_workspace_size() bytes of device memory, owned by the caller.
#pragma once

#include "faseg_cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Sizes read from the inputs plus the op attributes (same fields and meaning as
// faseg::TopKCrossAttnDims in export/plugins/ort/topk_cross_attn_cpu.h).
typedef struct FasegTopKCrossAttnShape {
  int64_t batch;        // N
  int64_t num_queries;  // Q
  int64_t channels;     // C
  int64_t hr_h;         // H3
  int64_t hr_w;         // W3
  int64_t num_tokens;   // S0 = coarse_attn.shape[2]
  int64_t num_heads;    // attribute num_heads
  int64_t divisor;      // attribute divisor (k = S0 // divisor)
  int64_t mode;         // 0 = window, 1 = bilinear
  int64_t level0_h;     // 0 together with level0_w = 0: derived from H3, W3 and S0
  int64_t level0_w;
} FasegTopKCrossAttnShape;

// Largest head dim (C / num_heads) the attention kernel supports.
#define FASEG_TOPK_MAX_HEAD_DIM 256

// Validates attributes and geometry (host only, no CUDA call). Returns 0 when valid; otherwise
// returns 1 and writes a NUL-terminated message (the CPU op's wording) into message[0:message_size].
FASEG_CUDA_API int faseg_topk_cross_attn_check(const FasegTopKCrossAttnShape* shape, char* message,
                                               size_t message_size);

// Number of selected 1/4-resolution pixels, k * window^2 (0 when the shape is invalid). Host only.
FASEG_CUDA_API int64_t faseg_topk_cross_attn_num_memory(const FasegTopKCrossAttnShape* shape);

// Workspace bytes for `shape` (host only). With upper_bound != 0 the result does not need a valid
// geometry and bounds the workspace of every valid shape whose sizes are all <= those given (it uses
// k * window^2 <= H3 * W3 / divisor); TensorRT plugins call it with the profile's maximum dims.
FASEG_CUDA_API size_t faseg_topk_cross_attn_workspace_size(const FasegTopKCrossAttnShape* shape, int upper_bound);

// Full op. Returns cudaErrorInvalidValue when the shape is invalid (see faseg_topk_cross_attn_check)
// or workspace_size is too small; otherwise cudaSuccess or the first launch error.
FASEG_CUDA_API cudaError_t faseg_topk_cross_attn_forward(cudaStream_t stream, const FasegTopKCrossAttnShape* shape,
                                                         const float* query, const float* feat, const float* pos,
                                                         const float* coarse_attn, const float* in_proj_weight,
                                                         const float* in_proj_bias, const float* out_proj_weight,
                                                         const float* out_proj_bias, float* output, void* workspace,
                                                         size_t workspace_size);

// Selection only (steps 1-3), for testing the selection decisions separately from the numerics:
// writes the k * window^2 selected flat pixel indices (y * W3 + x) of every batch element into
// pixels [N, k * window^2] (int32). Window mode lists the selected windows in increasing token order,
// pixels row-major inside a window; bilinear mode lists pixels in increasing index order.
FASEG_CUDA_API cudaError_t faseg_topk_cross_attn_select(cudaStream_t stream, const FasegTopKCrossAttnShape* shape,
                                                        const float* coarse_attn, int32_t* pixels, void* workspace,
                                                        size_t workspace_size);

#ifdef __cplusplus
}  // extern "C"
#endif
