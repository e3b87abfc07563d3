#include "msDeformAttnPlugin.h"

#include <exception>
#include <utility>
#include <vector>

#include "../../cuda/ms_deform_attn_kernel.h"
#include "../common/pluginCommon.h"

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace faseg {
namespace trt {

namespace {

constexpr int32_t kNbInputs = 5;
constexpr int32_t kValue = 0, kShapes = 1, kStarts = 2, kLocations = 3, kWeights = 4;

int kernelType(DataType type) { return type == DataType::kHALF ? FASEG_FLOAT16 : FASEG_FLOAT32; }

}  // namespace

MSDeformAttnPlugin::MSDeformAttnPlugin(std::string pluginNamespace) : mNamespace(std::move(pluginNamespace)) {}

nvinfer1::IPluginCapability* MSDeformAttnPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* MSDeformAttnPlugin::clone() noexcept {
  try {
    return new MSDeformAttnPlugin(mNamespace);
  } catch (std::exception const& e) {
    logError(std::string(kMSDeformAttnName) + ": clone failed: " + e.what());
  }
  return nullptr;
}

char const* MSDeformAttnPlugin::getPluginName() const noexcept { return kMSDeformAttnName; }
char const* MSDeformAttnPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* MSDeformAttnPlugin::getPluginNamespace() const noexcept { return mNamespace.c_str(); }

std::string MSDeformAttnPlugin::checkDims(Dims const* in, int32_t nbInputs) {
  if (nbInputs != kNbInputs) return "expects 5 inputs, got " + std::to_string(nbInputs);
  static constexpr int32_t kRanks[kNbInputs] = {4, 2, 1, 6, 5};
  static constexpr char const* kLayouts[kNbInputs] = {
      "value [N, S, M, D]", "spatial_shapes [L, 2]", "level_start_index [L]",
      "sampling_locations [N, Lq, M, L, P, 2]", "attention_weights [N, Lq, M, L, P]"};
  std::vector<std::string> errors;
  for (int32_t i = 0; i < kNbInputs; ++i) {
    if (in[i].nbDims != kRanks[i]) {
      errors.push_back(std::string(kLayouts[i]) + " must have rank " + std::to_string(kRanks[i]) + ", got shape " +
                       dimsToString(in[i]));
    }
  }
  if (!errors.empty()) return joinErrors(errors);
  Dims const& value = in[kValue];
  Dims const& locs = in[kLocations];
  Dims const& weights = in[kWeights];
  int64_t const n = value.d[0], m = value.d[2], l = in[kShapes].d[0];
  expectDim(errors, "spatial_shapes.shape[1]", in[kShapes].d[1], 2);
  expectDim(errors, "level_start_index.shape[0] (L)", in[kStarts].d[0], l);
  expectDim(errors, "sampling_locations.shape[0] (N)", locs.d[0], n);
  expectDim(errors, "sampling_locations.shape[2] (M)", locs.d[2], m);
  expectDim(errors, "sampling_locations.shape[3] (L)", locs.d[3], l);
  expectDim(errors, "sampling_locations.shape[5]", locs.d[5], 2);
  expectDim(errors, "attention_weights.shape[0] (N)", weights.d[0], n);
  expectDim(errors, "attention_weights.shape[1] (Lq)", weights.d[1], locs.d[1]);
  expectDim(errors, "attention_weights.shape[2] (M)", weights.d[2], m);
  expectDim(errors, "attention_weights.shape[3] (L)", weights.d[3], l);
  expectDim(errors, "attention_weights.shape[4] (P)", weights.d[4], locs.d[4]);
  if (l == 0) errors.push_back("spatial_shapes must describe at least one level");
  return joinErrors(errors);
}

int32_t MSDeformAttnPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  return configureOneOutput(kMSDeformAttnName, in, nbInputs, nbOutputs, &MSDeformAttnPlugin::checkDims);
}

int32_t MSDeformAttnPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != kNbInputs) return -1;
  outputTypes[0] = inputTypes[kValue];  // the output type follows `value`
  return 0;
}

int32_t MSDeformAttnPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                            nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                            nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || inputs[kValue].nbDims != 4 || inputs[kLocations].nbDims != 6) {
    logError(std::string(kMSDeformAttnName) + ": getOutputShapes needs value of rank 4 and sampling_locations of "
             "rank 6 among 5 inputs");
    return -1;
  }
  // output [N, Lq, M, D]
  outputs[0].nbDims = 4;
  outputs[0].d[0] = inputs[kValue].d[0];
  outputs[0].d[1] = inputs[kLocations].d[1];
  outputs[0].d[2] = inputs[kValue].d[2];
  outputs[0].d[3] = inputs[kValue].d[3];
  return 0;
}

bool MSDeformAttnPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos >= kNbInputs + 1) return false;
  PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != TensorFormat::kLINEAR) return false;
  switch (pos) {
    case kValue: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    case kShapes:
    case kStarts: return desc.type == DataType::kINT32;
    default: return desc.type == inOut[kValue].desc.type;  // locations, weights and the output: T
  }
}

int32_t MSDeformAttnPlugin::getNbOutputs() const noexcept { return 1; }

size_t MSDeformAttnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
                                            DynamicPluginTensorDesc const* /*outputs*/,
                                            int32_t /*nbOutputs*/) const noexcept {
  return 0;
}

char const* MSDeformAttnPlugin::getMetadataString() noexcept { return "FASegMSDeformAttn_TRT v1 (fp32 sampling math)"; }

int32_t MSDeformAttnPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                          PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
  return checkInputDims(kMSDeformAttnName, "onShapeChange", in, nbInputs,
                        &MSDeformAttnPlugin::checkDims);
}

int32_t MSDeformAttnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                    void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                    cudaStream_t stream) noexcept {
  Dims const& value = inputDesc[kValue].dims;
  Dims const& locs = inputDesc[kLocations].dims;
  int const type = kernelType(inputDesc[kValue].type);
  cudaError_t const status = faseg_ms_deform_attn_forward(
      stream, type, type, inputs[kValue], static_cast<int32_t const*>(inputs[kShapes]),
      static_cast<int32_t const*>(inputs[kStarts]), inputs[kLocations], inputs[kWeights], outputs[0],
      /*batch=*/value.d[0], /*num_value=*/value.d[1], /*num_heads=*/value.d[2], /*head_dim=*/value.d[3],
      /*num_levels=*/inputDesc[kShapes].dims.d[0], /*num_queries=*/locs.d[1], /*num_points=*/locs.d[4]);
  if (status != cudaSuccess) {
    logError(std::string(kMSDeformAttnName) + ": kernel launch failed: " + cudaGetErrorString(status));
    return -1;
  }
  return 0;
}

nvinfer1::IPluginV3* MSDeformAttnPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();
}

nvinfer1::PluginFieldCollection const* MSDeformAttnPlugin::getFieldsToSerialize() noexcept { return &mSerialized; }

// ---------------------------------------------------------------------------------------------

MSDeformAttnPluginCreator::MSDeformAttnPluginCreator() : mNamespace(kPluginNamespace) {}

char const* MSDeformAttnPluginCreator::getPluginName() const noexcept { return kMSDeformAttnName; }
char const* MSDeformAttnPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* MSDeformAttnPluginCreator::getPluginNamespace() const noexcept { return mNamespace.c_str(); }

nvinfer1::PluginFieldCollection const* MSDeformAttnPluginCreator::getFieldNames() noexcept { return &mFieldNames; }

nvinfer1::IPluginV3* MSDeformAttnPluginCreator::createPlugin(char const* /*name*/,
                                                             nvinfer1::PluginFieldCollection const* /*fc*/,
                                                             nvinfer1::TensorRTPhase /*phase*/) noexcept {
  // No fields: plugin_version / plugin_namespace are consumed by the ONNX parser, anything else is
  // ignored (the parser only warns about unknown fields too).
  try {
    return new MSDeformAttnPlugin(mNamespace);
  } catch (std::exception const& e) {
    logError(std::string(kMSDeformAttnName) + ": createPlugin failed: " + e.what());
  }
  return nullptr;
}

}  // namespace trt
}  // namespace faseg
