// Multi-scale deformable attention: CUDA forward and backward kernels (C ABI).
//
// Provenance: written for FASeg from the operator definition in docs/plugin_contract.md §1 and the
// PyTorch reference model/ops/ms_deform_attn.py (grid_sample, bilinear, zero padding,
// align_corners=False). The operator itself is Deformable DETR's (Zhu et al., 2021,
// arXiv:2010.04159); no code was taken from its CUDA implementation or from NVIDIA's plugin.
// License: Apache-2.0, as the rest of FASeg.
//
// Layouts (dense row-major; identical to NVIDIA's MultiscaleDeformableAttnPlugin_TRT):
//   value              [N, S, M, D]         value_type
//   spatial_shapes     [L, 2]               int32, (H_l, W_l), device memory
//   level_start_index  [L]                  int32, exclusive prefix sum of H_l*W_l, device memory
//   sampling_locations [N, Lq, M, L, P, 2]  coord_type, (x, y) normalised to [0, 1]
//   attention_weights  [N, Lq, M, L, P]     coord_type
//   output             [N, Lq, M, D]        value_type
//
// Precision: fp16 tensors are storage only. The pixel coordinates (loc * W - 0.5), the bilinear
// weights and the accumulation over L*P samples are fp32 (fp64 for FASEG_FLOAT64 values), unlike
// NVIDIA's fp16 kernel which does them in __half.
//
// Level tables live in device memory and are not validated against each other (a GPU kernel cannot
// report that cheaply); a level whose [start, start + H*W) range does not fit in [0, S) is skipped,
// so invalid tables never cause reads outside `value`. Hosts that can read the tables should validate
// them first (ms_deform_attn_check_levels in export/plugins/ort/ms_deform_attn_cpu.h).
#pragma once

#include "faseg_cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// output = MSDeformAttn(value, ...). Supported (value_type, coord_type) pairs:
//   (FLOAT32, FLOAT32), (FLOAT16, FLOAT16), (FLOAT16, FLOAT32), (FLOAT64, FLOAT64).
// Returns cudaSuccess, cudaErrorInvalidValue for an unsupported type pair or negative sizes, or the
// launch error. Every launch goes to `stream`; nothing is synchronised.
FASEG_CUDA_API cudaError_t faseg_ms_deform_attn_forward(cudaStream_t stream, int value_type, int coord_type,
                                                        const void* value, const int32_t* spatial_shapes,
                                                        const int32_t* level_start_index,
                                                        const void* sampling_locations,
                                                        const void* attention_weights, void* output, int64_t batch,
                                                        int64_t num_value, int64_t num_heads, int64_t head_dim,
                                                        int64_t num_levels, int64_t num_queries, int64_t num_points);

// Gradients of the forward with respect to value, sampling_locations and attention_weights, given
// grad_output [N, Lq, M, D]. All floating-point tensors have type `dtype` (FLOAT32 or FLOAT64; fp16
// callers upcast). grad_value [N, S, M, D] is zeroed here and accumulated with atomics (so its
// summation order is not deterministic); grad_sampling_locations [N, Lq, M, L, P, 2] and
// grad_attention_weights [N, Lq, M, L, P] are written once per element. A sample entirely outside
// its map (or with a non-finite location) gets zero gradients, as with grid_sample.
FASEG_CUDA_API cudaError_t faseg_ms_deform_attn_backward(
    cudaStream_t stream, int dtype, const void* value, const int32_t* spatial_shapes,
    const int32_t* level_start_index, const void* sampling_locations, const void* attention_weights,
    const void* grad_output, void* grad_value, void* grad_sampling_locations, void* grad_attention_weights,
    int64_t batch, int64_t num_value, int64_t num_heads, int64_t head_dim, int64_t num_levels, int64_t num_queries,
    int64_t num_points);

#ifdef __cplusplus
}  // extern "C"
#endif
