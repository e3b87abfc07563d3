// FASegTopKCrossAttn_TRT v1: FASeg's HRCA step (score sum, top-k, window gather, projections,
// multi-head attention, output projection) as one TensorRT IPluginV3.
//
// Provenance: written for FASeg (Apache-2.0) from docs/plugin_contract.md §2; kernels in
// export/plugins/cuda/topk_cross_attn_kernel.cu. Fields (INT attributes of the ONNX node, kINT32):
// num_heads (required), divisor (32), mode (0 window | 1 bilinear), level0_h (0), level0_w (0).
// All five are serialized into the engine.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace faseg {
namespace trt {

constexpr char const* kTopKCrossAttnName = "FASegTopKCrossAttn_TRT";

struct TopKCrossAttnAttributes {
  int32_t numHeads = 0;
  int32_t divisor = 32;
  int32_t mode = 0;
  int32_t level0H = 0;
  int32_t level0W = 0;

  // Reads and validates the fields (the ONNX Runtime op's rules). Returns "" when valid.
  static std::string parse(nvinfer1::PluginFieldCollection const* fc, TopKCrossAttnAttributes* out);
};

class TopKCrossAttnPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime {
 public:
  TopKCrossAttnPlugin(TopKCrossAttnAttributes attributes, std::string pluginNamespace);
  ~TopKCrossAttnPlugin() override = default;
  // mFields points into this object: copies go through clone(), which rebuilds them.
  TopKCrossAttnPlugin(TopKCrossAttnPlugin const&) = delete;
  TopKCrossAttnPlugin& operator=(TopKCrossAttnPlugin const&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  char const* getTimingCacheID() noexcept override;
  char const* getMetadataString() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

  // Checks ranks and cross-input consistency on (possibly partly unknown) dims:
  // query [N, Q, C], feat/pos [N, C, H3, W3], coarse_attn [N, Q, S0], in_proj_weight [3C, C],
  // in_proj_bias [3C], out_proj_weight [C, C], out_proj_bias [C]. With all dims known it also checks
  // the geometry (faseg_topk_cross_attn_check). Returns "" when consistent.
  std::string checkDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const;

  TopKCrossAttnAttributes const& attributes() const { return mAttributes; }

 private:
  TopKCrossAttnAttributes mAttributes;
  std::string mNamespace;
  std::string mDescription;  // timing-cache id and metadata string
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFieldCollection{0, nullptr};
};

class TopKCrossAttnPluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  TopKCrossAttnPluginCreator();
  ~TopKCrossAttnPluginCreator() override = default;

  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> mFieldNames;
  nvinfer1::PluginFieldCollection mFieldCollection{0, nullptr};
  std::string mNamespace;
};

}  // namespace trt
}  // namespace faseg
