// PyTorch binding of FASeg's CUDA kernels (built with torch.utils.cpp_extension together with
// ../cuda/*.cu and ../ort/topk_cross_attn_cpu.cc; see faseg.model.ops.cuda_library.build_extension).
//
// Deliberately thin: shapes, dtypes and output/workspace allocation are handled in Python
// (faseg.model.ops.cuda_ops), identically for this module and for the prebuilt C-ABI library loaded
// with ctypes. Each function checks devices and contiguity, selects the tensors' device, and
// launches on PyTorch's current CUDA stream. Written for FASeg (Apache-2.0).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <string>
#include <vector>

#include "../cuda/ms_deform_attn_kernel.h"
#include "../cuda/topk_cross_attn_kernel.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return FASEG_FLOAT32;
    case at::kHalf: return FASEG_FLOAT16;
    case at::kDouble: return FASEG_FLOAT64;
    default: TORCH_CHECK(false, "faseg kernels support float32, float16 and float64, got ", t.scalar_type());
  }
  return -1;
}

void expect_cuda(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.is_cuda() && t.device() == device, name, " must be a CUDA tensor on ", device);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

FasegTopKCrossAttnShape make_shape(const std::vector<int64_t>& v) {
  TORCH_CHECK(v.size() == 11, "topk shape needs 11 integers, got ", v.size());
  return FasegTopKCrossAttnShape{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]};
}

void msda_forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& locs,
                  const at::Tensor& weights, const at::Tensor& out) {
  const at::Device device = value.device();
  for (const auto& [t, name] : {std::pair{value, "value"}, {shapes, "spatial_shapes"}, {starts, "level_start_index"},
                                {locs, "sampling_locations"}, {weights, "attention_weights"}, {out, "output"}}) {
    expect_cuda(t, name, device);
  }
  TORCH_CHECK(shapes.scalar_type() == at::kInt && starts.scalar_type() == at::kInt, "level tables must be int32");
  const c10::cuda::CUDAGuard guard(device);
  check(faseg_ms_deform_attn_forward(c10::cuda::getCurrentCUDAStream(), dtype_code(value), dtype_code(locs),
                                     value.data_ptr(), shapes.data_ptr<int32_t>(), starts.data_ptr<int32_t>(),
                                     locs.data_ptr(), weights.data_ptr(), out.data_ptr(), value.size(0),
                                     value.size(1), value.size(2), value.size(3), shapes.size(0), locs.size(1),
                                     locs.size(4)),
        "faseg_ms_deform_attn_forward");
}

void msda_backward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& locs,
                   const at::Tensor& weights, const at::Tensor& grad_out, const at::Tensor& grad_value,
                   const at::Tensor& grad_locs, const at::Tensor& grad_weights) {
  const at::Device device = value.device();
  for (const auto& [t, name] :
       {std::pair{value, "value"}, {shapes, "spatial_shapes"}, {starts, "level_start_index"},
        {locs, "sampling_locations"}, {weights, "attention_weights"}, {grad_out, "grad_output"},
        {grad_value, "grad_value"}, {grad_locs, "grad_sampling_locations"}, {grad_weights, "grad_attention_weights"}}) {
    expect_cuda(t, name, device);
  }
  const c10::cuda::CUDAGuard guard(device);
  check(faseg_ms_deform_attn_backward(c10::cuda::getCurrentCUDAStream(), dtype_code(value), value.data_ptr(),
                                      shapes.data_ptr<int32_t>(), starts.data_ptr<int32_t>(), locs.data_ptr(),
                                      weights.data_ptr(), grad_out.data_ptr(), grad_value.data_ptr(),
                                      grad_locs.data_ptr(), grad_weights.data_ptr(), value.size(0), value.size(1),
                                      value.size(2), value.size(3), shapes.size(0), locs.size(1), locs.size(4)),
        "faseg_ms_deform_attn_backward");
}

std::string topk_check(const std::vector<int64_t>& shape) {
  const FasegTopKCrossAttnShape s = make_shape(shape);
  char message[512] = {0};
  faseg_topk_cross_attn_check(&s, message, sizeof(message));
  return message;
}

int64_t topk_num_memory(const std::vector<int64_t>& shape) {
  const FasegTopKCrossAttnShape s = make_shape(shape);
  return faseg_topk_cross_attn_num_memory(&s);
}

int64_t topk_workspace_size(const std::vector<int64_t>& shape, bool upper_bound) {
  const FasegTopKCrossAttnShape s = make_shape(shape);
  return static_cast<int64_t>(faseg_topk_cross_attn_workspace_size(&s, upper_bound ? 1 : 0));
}

void topk_forward(const std::vector<int64_t>& shape, const at::Tensor& query, const at::Tensor& feat,
                  const at::Tensor& pos, const at::Tensor& coarse, const at::Tensor& w_in,
                  const c10::optional<at::Tensor>& b_in, const at::Tensor& w_out, const c10::optional<at::Tensor>& b_out,
                  const at::Tensor& out, const at::Tensor& workspace) {
  const at::Device device = query.device();
  for (const auto& [t, name] : {std::pair{query, "query"}, {feat, "feat"}, {pos, "pos"}, {coarse, "coarse_attn"},
                                {w_in, "in_proj_weight"}, {w_out, "out_proj_weight"}, {out, "output"},
                                {workspace, "workspace"}}) {
    expect_cuda(t, name, device);
  }
  if (b_in) expect_cuda(*b_in, "in_proj_bias", device);
  if (b_out) expect_cuda(*b_out, "out_proj_bias", device);
  const FasegTopKCrossAttnShape s = make_shape(shape);
  const c10::cuda::CUDAGuard guard(device);
  check(faseg_topk_cross_attn_forward(
            c10::cuda::getCurrentCUDAStream(), &s, query.data_ptr<float>(), feat.data_ptr<float>(),
            pos.data_ptr<float>(), coarse.data_ptr<float>(), w_in.data_ptr<float>(),
            b_in ? b_in->data_ptr<float>() : nullptr, w_out.data_ptr<float>(),
            b_out ? b_out->data_ptr<float>() : nullptr, out.data_ptr<float>(), workspace.data_ptr(),
            static_cast<size_t>(workspace.numel() * workspace.element_size())),
        "faseg_topk_cross_attn_forward");
}

void topk_select(const std::vector<int64_t>& shape, const at::Tensor& coarse, const at::Tensor& pixels,
                 const at::Tensor& workspace) {
  const at::Device device = coarse.device();
  for (const auto& [t, name] : {std::pair{coarse, "coarse_attn"}, {pixels, "pixels"}, {workspace, "workspace"}}) {
    expect_cuda(t, name, device);
  }
  TORCH_CHECK(pixels.scalar_type() == at::kInt, "pixels must be int32");
  const FasegTopKCrossAttnShape s = make_shape(shape);
  const c10::cuda::CUDAGuard guard(device);
  check(faseg_topk_cross_attn_select(c10::cuda::getCurrentCUDAStream(), &s, coarse.data_ptr<float>(),
                                     pixels.data_ptr<int32_t>(), workspace.data_ptr(),
                                     static_cast<size_t>(workspace.numel() * workspace.element_size())),
        "faseg_topk_cross_attn_select");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "FASeg CUDA kernels (see faseg.model.ops.cuda_library)";
  m.def("abi_version", [] { return FASEG_CUDA_ABI_VERSION; });
  m.def("msda_forward", &msda_forward);
  m.def("msda_backward", &msda_backward);
  m.def("topk_check", &topk_check);
  m.def("topk_num_memory", &topk_num_memory);
  m.def("topk_workspace_size", &topk_workspace_size);
  m.def("topk_forward", &topk_forward);
  m.def("topk_select", &topk_select);
}
