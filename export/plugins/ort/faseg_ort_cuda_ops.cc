// ONNX Runtime CUDA custom ops for FASeg: the CUDAExecutionProvider kernels of FASegMSDeformAttn_TRT
// (fp32, fp16) and FASegTopKCrossAttn_TRT (fp32), in the same "faseg" domain as the CPU kernels of
// faseg_ort_ops.cc (contract: docs/plugin_contract.md). Built only with -DFASEG_WITH_CUDA=ON.
//
// How the CUDA kernels join the CPU library without changing faseg_ort_ops.cc: with FASEG_WITH_CUDA
// that file is compiled with RegisterCustomOps renamed to FasegRegisterCpuCustomOps, and this file
// defines the exported RegisterCustomOps. It hands the CPU registration an OrtApi table identical to
// the runtime's except for AddCustomOpDomain, which first adds the CUDA ops to the CPU library's
// domain object (created once per process) and then forwards. ONNX Runtime requires kernels of one
// op type for several execution providers to live in the same domain object; a second "faseg"
// domain would register the schema twice. A CPU-only session keeps using the CPU kernels.
//
// I/O live in device memory (the default memory type of CUDA EP inputs), including the int32 level
// tables of MSDA, which therefore are not validated on the host (the kernel skips levels that do
// not fit in `value`; see ms_deform_attn_kernel.h). The stream comes from the plain C API
// KernelContext_GetGPUComputeStream (the Ort::Custom::CudaContext helpers need ORT's internal CUDA
// headers, which the Debian headers package lacks); the HRCA workspace comes from
// KernelContext_GetScratchBuffer (stream-ordered) on the session's CUDA allocator.
//
// Written for FASeg (Apache-2.0). Compile-checked only: no GPU build of ONNX Runtime was available.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cuda_runtime_api.h>

#include <cstdint>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "../cuda/ms_deform_attn_kernel.h"
#include "../cuda/topk_cross_attn_kernel.h"
#include "ort_op_common.h"

#if defined(_WIN32)
#define FASEG_ORT_EXPORT __declspec(dllexport)
#else
#define FASEG_ORT_EXPORT __attribute__((visibility("default")))
#endif

// The CPU library's entry point, renamed by CMake when FASEG_WITH_CUDA is ON.
extern "C" OrtStatus* ORT_API_CALL FasegRegisterCpuCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base);

namespace {

using namespace faseg_ort;

constexpr const char* kCudaProvider = "CUDAExecutionProvider";

const OrtApi* g_api = nullptr;  // the runtime's own table

void check_cuda(const char* op, cudaError_t status) {
  if (status != cudaSuccess) fail(op, std::string("CUDA error: ") + cudaGetErrorString(status), ORT_FAIL);
}

cudaStream_t compute_stream(OrtKernelContext* context) {
  void* stream = nullptr;
  Ort::ThrowOnError(g_api->KernelContext_GetGPUComputeStream(context, &stream));
  return static_cast<cudaStream_t>(stream);
}

// Device scratch memory for one Compute call, released to the session's CUDA allocator on scope exit.
class Scratch {
 public:
  Scratch(OrtKernelContext* context, size_t bytes) {
    if (bytes == 0) return;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) device = 0;
    OrtMemoryInfo* info = nullptr;
    Ort::ThrowOnError(g_api->CreateMemoryInfo("Cuda", OrtDeviceAllocator, device, OrtMemTypeDefault, &info));
    OrtStatus* status = g_api->KernelContext_GetAllocator(context, info, &allocator_);
    if (status == nullptr) status = g_api->KernelContext_GetScratchBuffer(context, info, bytes, &data_);
    g_api->ReleaseMemoryInfo(info);
    Ort::ThrowOnError(status);
  }
  ~Scratch() {
    if (data_ != nullptr && allocator_ != nullptr) {
      if (OrtStatus* s = g_api->AllocatorFree(allocator_, data_)) g_api->ReleaseStatus(s);
    }
    if (allocator_ != nullptr) g_api->ReleaseAllocator(allocator_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* data() const { return data_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  void* data_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// FASegMSDeformAttn_TRT, CUDA
// ---------------------------------------------------------------------------------------------

template <typename T>
struct MSDeformAttnCudaKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(g_api, [&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    const char* op = kMSDeformAttnName;
    Ort::KernelContext ctx(context);
    Ort::ConstValue value = ctx.GetInput(0), shapes = ctx.GetInput(1), starts = ctx.GetInput(2),
                    locs = ctx.GetInput(3), weights = ctx.GetInput(4);
    const auto vs = value.GetTensorTypeAndShapeInfo().GetShape();
    const auto ss = shapes.GetTensorTypeAndShapeInfo().GetShape();
    const auto ls = starts.GetTensorTypeAndShapeInfo().GetShape();
    const auto ps = locs.GetTensorTypeAndShapeInfo().GetShape();
    const auto ws = weights.GetTensorTypeAndShapeInfo().GetShape();
    expect_rank(op, "value", vs, 4, "[N, S, M, D]");
    expect_rank(op, "spatial_shapes", ss, 2, "[L, 2]");
    expect_rank(op, "level_start_index", ls, 1, "[L]");
    expect_rank(op, "sampling_locations", ps, 6, "[N, Lq, M, L, P, 2]");
    expect_rank(op, "attention_weights", ws, 5, "[N, Lq, M, L, P]");
    const int64_t n = vs[0], s = vs[1], m = vs[2], d = vs[3], l = ss[0], lq = ps[1], p = ps[4];
    expect_dim(op, "spatial_shapes.shape[1]", ss[1], 2);
    expect_dim(op, "level_start_index.shape[0] (L)", ls[0], l);
    expect_dim(op, "sampling_locations.shape[0] (N)", ps[0], n);
    expect_dim(op, "sampling_locations.shape[2] (M)", ps[2], m);
    expect_dim(op, "sampling_locations.shape[3] (L)", ps[3], l);
    expect_dim(op, "sampling_locations.shape[5]", ps[5], 2);
    const std::vector<int64_t> want_w = {n, lq, m, l, p};
    if (ws != want_w) fail(op, "attention_weights has shape " + shape_str(ws) + ", expected " + shape_str(want_w));
    if (l < 1) fail(op, "spatial_shapes must describe at least one level");

    const std::vector<int64_t> out_shape = {n, lq, m, d};
    Ort::UnownedValue out = ctx.GetOutput(0, out_shape);
    if (numel(out_shape) == 0) return;
    const int type = std::is_same_v<T, float> ? FASEG_FLOAT32 : FASEG_FLOAT16;
    check_cuda(op, faseg_ms_deform_attn_forward(
                       compute_stream(context), type, type, value.GetTensorRawData(),
                       shapes.GetTensorData<int32_t>(), starts.GetTensorData<int32_t>(), locs.GetTensorRawData(),
                       weights.GetTensorRawData(), out.GetTensorMutableRawData(), n, s, m, d, l, lq, p));
  }
};

template <typename T>
struct MSDeformAttnCudaOp : Ort::CustomOpBase<MSDeformAttnCudaOp<T>, MSDeformAttnCudaKernel<T>, true> {
  static constexpr ONNXTensorElementDataType kType = std::is_same_v<T, float> ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                                               : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* /*info*/, void** kernel) const {
    return guarded(g_api, [&] { *kernel = new MSDeformAttnCudaKernel<T>(); });
  }
  const char* GetName() const { return kMSDeformAttnName; }
  const char* GetExecutionProviderType() const { return kCudaProvider; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return (index == 1 || index == 2) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : kType;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return kType; }
};

// ---------------------------------------------------------------------------------------------
// FASegTopKCrossAttn_TRT, CUDA
// ---------------------------------------------------------------------------------------------

struct TopKCrossAttnCudaKernel {
  FasegTopKCrossAttnShape attrs{};  // attribute fields only

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(g_api, [&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    const char* op = kTopKCrossAttnName;
    Ort::KernelContext ctx(context);
    std::vector<Ort::ConstValue> in;
    std::vector<std::vector<int64_t>> shape;
    for (size_t i = 0; i < 8; ++i) {
      in.push_back(ctx.GetInput(i));
      shape.push_back(in.back().GetTensorTypeAndShapeInfo().GetShape());
    }
    expect_rank(op, "query", shape[0], 3, "[N, Q, C]");
    expect_rank(op, "feat", shape[1], 4, "[N, C, H3, W3]");
    expect_rank(op, "pos", shape[2], 4, "[N, C, H3, W3]");
    expect_rank(op, "coarse_attn", shape[3], 3, "[N, Q, S0]");
    expect_rank(op, "in_proj_weight", shape[4], 2, "[3C, C]");
    expect_rank(op, "in_proj_bias", shape[5], 1, "[3C]");
    expect_rank(op, "out_proj_weight", shape[6], 2, "[C, C]");
    expect_rank(op, "out_proj_bias", shape[7], 1, "[C]");
    FasegTopKCrossAttnShape s = attrs;
    s.batch = shape[0][0];
    s.num_queries = shape[0][1];
    s.channels = shape[0][2];
    s.hr_h = shape[1][2];
    s.hr_w = shape[1][3];
    s.num_tokens = shape[3][2];
    const int64_t c = s.channels;
    expect_dim(op, "feat.shape[0] (N)", shape[1][0], s.batch);
    expect_dim(op, "feat.shape[1] (C)", shape[1][1], c);
    if (shape[2] != shape[1]) fail(op, "pos has shape " + shape_str(shape[2]) + " but feat has " + shape_str(shape[1]));
    expect_dim(op, "coarse_attn.shape[0] (N)", shape[3][0], s.batch);
    expect_dim(op, "coarse_attn.shape[1] (Q)", shape[3][1], s.num_queries);
    if (shape[4] != std::vector<int64_t>{3 * c, c}) {
      fail(op, "in_proj_weight has shape " + shape_str(shape[4]) + ", expected " + shape_str({3 * c, c}));
    }
    expect_dim(op, "in_proj_bias.shape[0] (3C)", shape[5][0], 3 * c);
    if (shape[6] != std::vector<int64_t>{c, c}) {
      fail(op, "out_proj_weight has shape " + shape_str(shape[6]) + ", expected " + shape_str({c, c}));
    }
    expect_dim(op, "out_proj_bias.shape[0] (C)", shape[7][0], c);
    char message[512] = {0};
    if (faseg_topk_cross_attn_check(&s, message, sizeof(message)) != 0) fail(op, message);

    const std::vector<int64_t> out_shape = {s.batch, s.num_queries, c};
    Ort::UnownedValue out = ctx.GetOutput(0, out_shape);
    if (numel(out_shape) == 0) return;
    const size_t workspace_size = faseg_topk_cross_attn_workspace_size(&s, 0);
    Scratch workspace(context, workspace_size);
    auto f = [&](size_t i) { return in[i].GetTensorData<float>(); };
    check_cuda(op, faseg_topk_cross_attn_forward(compute_stream(context), &s, f(0), f(1), f(2), f(3), f(4), f(5),
                                                 f(6), f(7), out.GetTensorMutableData<float>(), workspace.data(),
                                                 workspace_size));
  }
};

struct TopKCrossAttnCudaOp : Ort::CustomOpBase<TopKCrossAttnCudaOp, TopKCrossAttnCudaKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded(g_api, [&] {
      FasegTopKCrossAttnShape a{};
      read_topk_attrs(g_api, info, a);
      auto* k = new TopKCrossAttnCudaKernel();
      k->attrs = a;
      *kernel = k;
    });
  }
  const char* GetName() const { return kTopKCrossAttnName; }
  const char* GetExecutionProviderType() const { return kCudaProvider; }
  size_t GetInputTypeCount() const { return 8; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// ---------------------------------------------------------------------------------------------
// Registration: the CPU library's domain, extended with the CUDA kernels
// ---------------------------------------------------------------------------------------------

std::mutex g_mutex;
const OrtApiBase* g_api_base = nullptr;
OrtApi g_patched_api;  // g_api with AddCustomOpDomain intercepted
bool g_patched_ready = false;
OrtCustomOpDomain* g_extended_domain = nullptr;

MSDeformAttnCudaOp<float> g_msda_f32;
MSDeformAttnCudaOp<Ort::Float16_t> g_msda_f16;
TopKCrossAttnCudaOp g_topk_f32;

OrtStatus* ORT_API_CALL add_domain_with_cuda_ops(OrtSessionOptions* options, OrtCustomOpDomain* domain) NO_EXCEPTION {
  // Called by the CPU registration with its process-wide domain; the CPU ops are already in it, so
  // every op type gets its CPU kernel first (ORT builds the schema from the first kernel of a name).
  if (domain != g_extended_domain) {
    for (OrtCustomOp* op : {static_cast<OrtCustomOp*>(&g_msda_f32), static_cast<OrtCustomOp*>(&g_msda_f16),
                            static_cast<OrtCustomOp*>(&g_topk_f32)}) {
      if (OrtStatus* s = g_api->CustomOpDomain_Add(domain, op)) return s;
    }
    g_extended_domain = domain;
  }
  return g_api->AddCustomOpDomain(options, domain);
}

const OrtApi* ORT_API_CALL patched_get_api(uint32_t version) NO_EXCEPTION {
  return version == ORT_API_VERSION ? &g_patched_api : g_api_base->GetApi(version);
}

const char* ORT_API_CALL patched_version_string() NO_EXCEPTION { return g_api_base->GetVersionString(); }

const OrtApiBase g_patched_base = {&patched_get_api, &patched_version_string};

}  // namespace

extern "C" FASEG_ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                      const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return FasegRegisterCpuCustomOps(options, api_base);  // reports the version error
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_patched_ready) {
    g_api_base = api_base;
    g_api = api;
    g_patched_api = *api;
    g_patched_api.AddCustomOpDomain = &add_domain_with_cuda_ops;
    g_patched_ready = true;
  }
  return FasegRegisterCpuCustomOps(options, &g_patched_base);
}
