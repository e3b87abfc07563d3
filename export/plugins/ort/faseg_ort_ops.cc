// ONNX Runtime CPU custom ops for FASeg: domain "faseg", ops FASegMSDeformAttn_TRT and
// FASegTopKCrossAttn_TRT (contract: docs/plugin_contract.md).
//
// Built against the ORT C/C++ headers (API version of the headers, 21 for Debian's 1.21 package);
// the C API is backward compatible, so newer runtimes (1.31 tested) load the library. There is no
// link dependency on libonnxruntime: the API table comes from RegisterCustomOps' OrtApiBase.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "ms_deform_attn_cpu.h"
#include "ort_op_common.h"
#include "topk_cross_attn_cpu.h"

#define FASEG_STR_(x) #x
#define FASEG_STR(x) FASEG_STR_(x)

#if defined(_WIN32)
#define FASEG_EXPORT __declspec(dllexport)
#else
#define FASEG_EXPORT __attribute__((visibility("default")))
#endif

namespace {

using namespace faseg_ort;

static_assert(faseg::kTopKWindow == 0 && faseg::kTopKBilinear == 1, "read_topk_attrs checks the contract's mode values");

constexpr const char* kCpuProvider = "CPUExecutionProvider";

const OrtApi* g_api = nullptr;

// Maps the kernels' ParallelFor onto ORT's intra-op thread pool (KernelContext_ParallelFor, API >= 17).
faseg::ParallelFor ort_parallel_for(OrtKernelContext* context) {
  return [context](int64_t total, int64_t grain, const faseg::RangeBody& body) {
    struct Job {
      const faseg::RangeBody* body;
      int64_t total;
      int64_t grain;
    } job{&body, total, grain};
    const int64_t chunks = (total + grain - 1) / grain;
    auto run_chunk = [](void* data, size_t index) {
      const Job* j = static_cast<const Job*>(data);
      const int64_t begin = static_cast<int64_t>(index) * j->grain;
      (*j->body)(begin, std::min(begin + j->grain, j->total));
    };
    OrtStatus* status = g_api->KernelContext_ParallelFor(context, run_chunk, static_cast<size_t>(chunks), 0, &job);
    if (status != nullptr) {  // no thread pool available: run serially (bodies are idempotent)
      g_api->ReleaseStatus(status);
      body(0, total);
    }
  };
}

struct TensorIn {
  Ort::ConstValue value;
  std::vector<int64_t> shape;
};

TensorIn input(Ort::KernelContext& ctx, size_t index) {
  Ort::ConstValue v = ctx.GetInput(index);
  return TensorIn{v, v.GetTensorTypeAndShapeInfo().GetShape()};
}

// ---------------------------------------------------------------------------------------------
// FASegMSDeformAttn_TRT
// ---------------------------------------------------------------------------------------------

template <typename T>
struct MSDeformAttnKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(g_api, [&] { Compute(context); });
  }

  static float to_float(float v) { return v; }
  static float to_float(Ort::Float16_t v) { return v.ToFloat(); }
  static void from_float(float v, float* out) { *out = v; }
  static void from_float(float v, Ort::Float16_t* out) { *out = Ort::Float16_t(v); }

  void Compute(OrtKernelContext* context) {
    const char* op = kMSDeformAttnName;
    Ort::KernelContext ctx(context);
    TensorIn value = input(ctx, 0), shapes = input(ctx, 1), starts = input(ctx, 2), locs = input(ctx, 3),
             weights = input(ctx, 4);
    expect_rank(op, "value", value.shape, 4, "[N, S, M, D]");
    expect_rank(op, "spatial_shapes", shapes.shape, 2, "[L, 2]");
    expect_rank(op, "level_start_index", starts.shape, 1, "[L]");
    expect_rank(op, "sampling_locations", locs.shape, 6, "[N, Lq, M, L, P, 2]");
    expect_rank(op, "attention_weights", weights.shape, 5, "[N, Lq, M, L, P]");

    faseg::MSDeformAttnDims d;
    d.batch = value.shape[0];
    d.num_value = value.shape[1];
    d.num_heads = value.shape[2];
    d.head_dim = value.shape[3];
    d.num_levels = shapes.shape[0];
    d.num_queries = locs.shape[1];
    d.num_points = locs.shape[4];
    expect_dim(op, "spatial_shapes.shape[1]", shapes.shape[1], 2);
    expect_dim(op, "level_start_index.shape[0] (L)", starts.shape[0], d.num_levels);
    expect_dim(op, "sampling_locations.shape[0] (N)", locs.shape[0], d.batch);
    expect_dim(op, "sampling_locations.shape[2] (M)", locs.shape[2], d.num_heads);
    expect_dim(op, "sampling_locations.shape[3] (L)", locs.shape[3], d.num_levels);
    expect_dim(op, "sampling_locations.shape[5]", locs.shape[5], 2);
    const std::vector<int64_t> want_w = {d.batch, d.num_queries, d.num_heads, d.num_levels, d.num_points};
    if (weights.shape != want_w) {
      fail(op, "attention_weights has shape " + shape_str(weights.shape) + ", expected " + shape_str(want_w));
    }
    if (d.num_levels < 1) fail(op, "spatial_shapes must describe at least one level");

    const int32_t* ss = shapes.value.GetTensorData<int32_t>();
    const int32_t* lsi = starts.value.GetTensorData<int32_t>();
    const std::string level_error = faseg::ms_deform_attn_check_levels(d, ss, lsi);
    if (!level_error.empty()) fail(op, level_error);

    const std::vector<int64_t> out_shape = {d.batch, d.num_queries, d.num_heads, d.head_dim};
    Ort::UnownedValue out = ctx.GetOutput(0, out_shape);
    if (numel(out_shape) == 0) return;
    T* out_data = out.GetTensorMutableData<T>();
    const T* v = value.value.GetTensorData<T>();
    const T* l = locs.value.GetTensorData<T>();
    const T* w = weights.value.GetTensorData<T>();

    if constexpr (std::is_same_v<T, float>) {
      faseg::ms_deform_attn_forward_cpu(d, v, ss, lsi, l, w, out_data, ort_parallel_for(context));
    } else {
      // Half precision I/O, fp32 compute.
      auto widen = [](const T* src, int64_t n) {
        std::vector<float> dst(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
        return dst;
      };
      const std::vector<float> v32 = widen(v, numel(value.shape));
      const std::vector<float> l32 = widen(l, numel(locs.shape));
      const std::vector<float> w32 = widen(w, numel(weights.shape));
      std::vector<float> o32(static_cast<size_t>(numel(out_shape)));
      faseg::ms_deform_attn_forward_cpu(d, v32.data(), ss, lsi, l32.data(), w32.data(), o32.data(),
                                        ort_parallel_for(context));
      for (size_t i = 0; i < o32.size(); ++i) from_float(o32[i], out_data + i);
    }
  }
};

template <typename T>
struct MSDeformAttnOp : Ort::CustomOpBase<MSDeformAttnOp<T>, MSDeformAttnKernel<T>, true> {
  static constexpr ONNXTensorElementDataType kType = std::is_same_v<T, float>
                                                         ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                         : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;

  MSDeformAttnOp() { this->InferOutputShapeFn = &InferShape; }

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* /*info*/, void** kernel) const {
    // plugin_version / plugin_namespace are accepted and ignored; the op has no other attributes.
    return guarded(g_api, [&] { *kernel = new MSDeformAttnKernel<T>(); });
  }
  const char* GetName() const { return kMSDeformAttnName; }
  const char* GetExecutionProviderType() const { return kCpuProvider; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return (index == 1 || index == 2) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : kType;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return kType; }

  // output [N, Lq, M, D] from value [N, S, M, D] and sampling_locations [N, Lq, M, L, P, 2].
  static OrtStatusPtr ORT_API_CALL InferShape(const OrtCustomOp* /*op*/, OrtShapeInferContext* raw) noexcept {
    return guarded(g_api, [&] {
      Ort::ShapeInferContext ctx(g_api, raw);
      if (ctx.GetInputCount() < 5) return;
      const auto& value = ctx.GetInputShape(0);
      const auto& locs = ctx.GetInputShape(3);
      if (value.size() != 4 || locs.size() != 6) return;  // unknown ranks: leave the output unknown
      Ort::ShapeInferContext::Shape out{value[0], locs[1], value[2], value[3]};
      // The output type follows `value` (ORT may hold one schema for the fp32 and fp16 registrations).
      // The info belongs to the context (not released here, as in Ort::ShapeInferContext).
      OrtTensorTypeAndShapeInfo* info = nullptr;
      Ort::ThrowOnError(g_api->ShapeInferContext_GetInputTypeShape(raw, 0, &info));
      ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
      Ort::ThrowOnError(g_api->GetTensorElementType(info, &type));
      Ort::ThrowOnError(ctx.SetOutputShape(0, out, type));
    });
  }
};

// ---------------------------------------------------------------------------------------------
// FASegTopKCrossAttn_TRT
// ---------------------------------------------------------------------------------------------

struct TopKCrossAttnKernel {
  faseg::TopKCrossAttnDims attrs;  // attribute fields only

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(g_api, [&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    const char* op = kTopKCrossAttnName;
    Ort::KernelContext ctx(context);
    TensorIn query = input(ctx, 0), feat = input(ctx, 1), pos = input(ctx, 2), coarse = input(ctx, 3),
             w_in = input(ctx, 4), b_in = input(ctx, 5), w_out = input(ctx, 6), b_out = input(ctx, 7);
    expect_rank(op, "query", query.shape, 3, "[N, Q, C]");
    expect_rank(op, "feat", feat.shape, 4, "[N, C, H3, W3]");
    expect_rank(op, "pos", pos.shape, 4, "[N, C, H3, W3]");
    expect_rank(op, "coarse_attn", coarse.shape, 3, "[N, Q, S0]");
    expect_rank(op, "in_proj_weight", w_in.shape, 2, "[3C, C]");
    expect_rank(op, "in_proj_bias", b_in.shape, 1, "[3C]");
    expect_rank(op, "out_proj_weight", w_out.shape, 2, "[C, C]");
    expect_rank(op, "out_proj_bias", b_out.shape, 1, "[C]");

    faseg::TopKCrossAttnDims d = attrs;
    d.batch = query.shape[0];
    d.num_queries = query.shape[1];
    d.channels = query.shape[2];
    d.hr_h = feat.shape[2];
    d.hr_w = feat.shape[3];
    d.num_tokens = coarse.shape[2];
    const int64_t C = d.channels;
    expect_dim(op, "feat.shape[0] (N)", feat.shape[0], d.batch);
    expect_dim(op, "feat.shape[1] (C)", feat.shape[1], C);
    if (pos.shape != feat.shape) {
      fail(op, "pos has shape " + shape_str(pos.shape) + " but feat has " + shape_str(feat.shape));
    }
    expect_dim(op, "coarse_attn.shape[0] (N)", coarse.shape[0], d.batch);
    expect_dim(op, "coarse_attn.shape[1] (Q)", coarse.shape[1], d.num_queries);
    if (w_in.shape != std::vector<int64_t>{3 * C, C}) {
      fail(op, "in_proj_weight has shape " + shape_str(w_in.shape) + ", expected " + shape_str({3 * C, C}));
    }
    expect_dim(op, "in_proj_bias.shape[0] (3C)", b_in.shape[0], 3 * C);
    if (w_out.shape != std::vector<int64_t>{C, C}) {
      fail(op, "out_proj_weight has shape " + shape_str(w_out.shape) + ", expected " + shape_str({C, C}));
    }
    expect_dim(op, "out_proj_bias.shape[0] (C)", b_out.shape[0], C);

    faseg::TopKCrossAttnPlan plan;
    const std::string plan_error = faseg::topk_cross_attn_plan(d, &plan);
    if (!plan_error.empty()) fail(op, plan_error);

    const std::vector<int64_t> out_shape = {d.batch, d.num_queries, C};
    Ort::UnownedValue out = ctx.GetOutput(0, out_shape);
    if (numel(out_shape) == 0) return;
    faseg::topk_cross_attn_forward_cpu(
        d, plan, query.value.GetTensorData<float>(), feat.value.GetTensorData<float>(),
        pos.value.GetTensorData<float>(), coarse.value.GetTensorData<float>(), w_in.value.GetTensorData<float>(),
        b_in.value.GetTensorData<float>(), w_out.value.GetTensorData<float>(), b_out.value.GetTensorData<float>(),
        out.GetTensorMutableData<float>(), ort_parallel_for(context));
  }
};

struct TopKCrossAttnOp : Ort::CustomOpBase<TopKCrossAttnOp, TopKCrossAttnKernel, true> {
  TopKCrossAttnOp() { InferOutputShapeFn = &InferShape; }

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded(g_api, [&] {
      faseg::TopKCrossAttnDims a;
      read_topk_attrs(g_api, info, a);
      auto* k = new TopKCrossAttnKernel();
      k->attrs = a;
      *kernel = k;
    });
  }
  const char* GetName() const { return kTopKCrossAttnName; }
  const char* GetExecutionProviderType() const { return kCpuProvider; }
  size_t GetInputTypeCount() const { return 8; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  // output [N, Q, C] = query's shape.
  static OrtStatusPtr ORT_API_CALL InferShape(const OrtCustomOp* /*op*/, OrtShapeInferContext* raw) noexcept {
    return guarded(g_api, [&] {
      Ort::ShapeInferContext ctx(g_api, raw);
      if (ctx.GetInputCount() < 1) return;
      const auto& query = ctx.GetInputShape(0);
      if (query.size() != 3) return;
      Ort::ThrowOnError(ctx.SetOutputShape(0, query, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
    });
  }
};

}  // namespace

extern "C" FASEG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                  const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Runtime older than the headers: report through the oldest API table, which every runtime serves.
    const OrtApi* v1 = api_base->GetApi(1);
    return v1 ? v1->CreateStatus(ORT_FAIL, "libfaseg_ort_ops needs an ONNX Runtime serving C API version " FASEG_STR(
                                               ORT_API_VERSION) " (the version of the headers it was built with)")
              : nullptr;
  }
  g_api = api;
  Ort::InitApi(api);

  // One domain for the whole process, created on first use and never released: sessions keep raw
  // pointers to it and to the op objects, so both must outlive every session.
  static std::mutex mutex;
  static OrtCustomOpDomain* domain = nullptr;
  static MSDeformAttnOp<float> msda_f32;
  static MSDeformAttnOp<Ort::Float16_t> msda_f16;
  static TopKCrossAttnOp topk_f32;
  std::lock_guard<std::mutex> lock(mutex);
  if (domain == nullptr) {
    OrtCustomOpDomain* created = nullptr;
    if (OrtStatus* s = api->CreateCustomOpDomain(kDomain, &created)) return s;
    for (OrtCustomOp* op : {static_cast<OrtCustomOp*>(&msda_f32), static_cast<OrtCustomOp*>(&msda_f16),
                            static_cast<OrtCustomOp*>(&topk_f32)}) {
      if (OrtStatus* s = api->CustomOpDomain_Add(created, op)) {
        api->ReleaseCustomOpDomain(created);
        return s;
      }
    }
    domain = created;
  }
  return api->AddCustomOpDomain(options, domain);
}
