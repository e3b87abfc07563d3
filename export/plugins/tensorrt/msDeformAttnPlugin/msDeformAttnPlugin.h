// FASegMSDeformAttn_TRT v1: multi-scale deformable attention as a TensorRT IPluginV3.
//
// Provenance: written for FASeg (Apache-2.0) against the TensorRT 10 plugin interfaces; the I/O
// contract (docs/plugin_contract.md §1) is that of NVIDIA's MultiscaleDeformableAttnPlugin_TRT v2,
// but the implementation (export/plugins/cuda/ms_deform_attn_kernel.cu) computes the sampling
// coordinates and the accumulation in fp32 for fp16 tensors. No attributes; nothing is serialized.
#pragma once

#include <NvInferRuntime.h>

#include <string>

namespace faseg {
namespace trt {

constexpr char const* kMSDeformAttnName = "FASegMSDeformAttn_TRT";

class MSDeformAttnPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit MSDeformAttnPlugin(std::string pluginNamespace);
  ~MSDeformAttnPlugin() override = default;

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
  char const* getMetadataString() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

  // Checks ranks and the cross-input consistency of the contract on (possibly partly unknown) dims:
  // value [N, S, M, D], spatial_shapes [L, 2], level_start_index [L], sampling_locations
  // [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P]. Returns "" when consistent.
  static std::string checkDims(nvinfer1::Dims const* inputs, int32_t nbInputs);

 private:
  std::string mNamespace;
  nvinfer1::PluginFieldCollection mSerialized{0, nullptr};
};

class MSDeformAttnPluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  MSDeformAttnPluginCreator();
  ~MSDeformAttnPluginCreator() override = default;

  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  nvinfer1::PluginFieldCollection mFieldNames{0, nullptr};
  std::string mNamespace;
};

}  // namespace trt
}  // namespace faseg
