#include "topkCrossAttnPlugin.h"

#include <exception>
#include <utility>

#include "../../cuda/topk_cross_attn_kernel.h"
#include "../common/pluginCommon.h"

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace faseg {
namespace trt {

namespace {

constexpr int32_t kNbInputs = 8;
constexpr int32_t kQuery = 0, kFeat = 1, kPos = 2, kCoarse = 3, kInW = 4, kInB = 5, kOutW = 6, kOutB = 7;

constexpr char const* kNumHeads = "num_heads";
constexpr char const* kDivisor = "divisor";
constexpr char const* kMode = "mode";
constexpr char const* kLevel0H = "level0_h";
constexpr char const* kLevel0W = "level0_w";

// Kernel shape from the input dims (all known) and the attributes.
FasegTopKCrossAttnShape kernelShape(Dims const* in, TopKCrossAttnAttributes const& a) {
  FasegTopKCrossAttnShape s{};
  s.batch = in[kQuery].d[0];
  s.num_queries = in[kQuery].d[1];
  s.channels = in[kQuery].d[2];
  s.hr_h = in[kFeat].d[2];
  s.hr_w = in[kFeat].d[3];
  s.num_tokens = in[kCoarse].d[2];
  s.num_heads = a.numHeads;
  s.divisor = a.divisor;
  s.mode = a.mode;
  s.level0_h = a.level0H;
  s.level0_w = a.level0W;
  return s;
}

}  // namespace

std::string TopKCrossAttnAttributes::parse(nvinfer1::PluginFieldCollection const* fc, TopKCrossAttnAttributes* out) {
  std::string error;
  int64_t numHeads = 0, divisor = 32, mode = 0, level0H = 0, level0W = 0;
  bool const hasHeads = readIntField(fc, kNumHeads, &numHeads, &error);
  readIntField(fc, kDivisor, &divisor, &error);
  readIntField(fc, kMode, &mode, &error);
  readIntField(fc, kLevel0H, &level0H, &error);
  readIntField(fc, kLevel0W, &level0W, &error);
  if (!error.empty()) return error;
  if (!hasHeads) return "the int attribute num_heads is required";
  if (numHeads < 1) return "num_heads must be >= 1, got " + std::to_string(numHeads);
  if (divisor < 1) return "divisor must be >= 1, got " + std::to_string(divisor);
  if (mode != 0 && mode != 1) return "mode must be 0 (window) or 1 (bilinear), got " + std::to_string(mode);
  if (level0H < 0 || level0W < 0 || ((level0H == 0) != (level0W == 0))) {
    return "level0_h and level0_w must both be >= 1, or both 0 (derive from the inputs); got " +
           std::to_string(level0H) + ", " + std::to_string(level0W);
  }
  int64_t const values[] = {numHeads, divisor, level0H, level0W};
  for (int64_t v : values) {
    if (v > INT32_MAX) return "attribute value " + std::to_string(v) + " does not fit in int32";
  }
  out->numHeads = static_cast<int32_t>(numHeads);
  out->divisor = static_cast<int32_t>(divisor);
  out->mode = static_cast<int32_t>(mode);
  out->level0H = static_cast<int32_t>(level0H);
  out->level0W = static_cast<int32_t>(level0W);
  return "";
}

TopKCrossAttnPlugin::TopKCrossAttnPlugin(TopKCrossAttnAttributes attributes, std::string pluginNamespace)
    : mAttributes(attributes), mNamespace(std::move(pluginNamespace)) {
  mDescription = std::string(kTopKCrossAttnName) + " v1 num_heads=" + std::to_string(mAttributes.numHeads) +
                 " divisor=" + std::to_string(mAttributes.divisor) + " mode=" + std::to_string(mAttributes.mode) +
                 " level0=" + std::to_string(mAttributes.level0H) + "x" + std::to_string(mAttributes.level0W);
  mFields = {PluginField(kNumHeads, &mAttributes.numHeads, PluginFieldType::kINT32, 1),
             PluginField(kDivisor, &mAttributes.divisor, PluginFieldType::kINT32, 1),
             PluginField(kMode, &mAttributes.mode, PluginFieldType::kINT32, 1),
             PluginField(kLevel0H, &mAttributes.level0H, PluginFieldType::kINT32, 1),
             PluginField(kLevel0W, &mAttributes.level0W, PluginFieldType::kINT32, 1)};
  mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
  mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginCapability* TopKCrossAttnPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* TopKCrossAttnPlugin::clone() noexcept {
  try {
    return new TopKCrossAttnPlugin(mAttributes, mNamespace);
  } catch (std::exception const& e) {
    logError(std::string(kTopKCrossAttnName) + ": clone failed: " + e.what());
  }
  return nullptr;
}

char const* TopKCrossAttnPlugin::getPluginName() const noexcept { return kTopKCrossAttnName; }
char const* TopKCrossAttnPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* TopKCrossAttnPlugin::getPluginNamespace() const noexcept { return mNamespace.c_str(); }

std::string TopKCrossAttnPlugin::checkDims(Dims const* in, int32_t nbInputs) const {
  if (nbInputs != kNbInputs) return "expects 8 inputs, got " + std::to_string(nbInputs);
  static constexpr int32_t kRanks[kNbInputs] = {3, 4, 4, 3, 2, 1, 2, 1};
  static constexpr char const* kLayouts[kNbInputs] = {
      "query [N, Q, C]",        "feat [N, C, H3, W3]",  "pos [N, C, H3, W3]",         "coarse_attn [N, Q, S0]",
      "in_proj_weight [3C, C]", "in_proj_bias [3C]",    "out_proj_weight [C, C]",     "out_proj_bias [C]"};
  std::vector<std::string> errors;
  for (int32_t i = 0; i < kNbInputs; ++i) {
    if (in[i].nbDims != kRanks[i]) {
      errors.push_back(std::string(kLayouts[i]) + " must have rank " + std::to_string(kRanks[i]) + ", got shape " +
                       dimsToString(in[i]));
    }
  }
  if (!errors.empty()) return joinErrors(errors);
  int64_t const n = in[kQuery].d[0], q = in[kQuery].d[1], c = in[kQuery].d[2];
  int64_t const c3 = c >= 0 ? 3 * c : -1;
  expectDim(errors, "feat.shape[0] (N)", in[kFeat].d[0], n);
  expectDim(errors, "feat.shape[1] (C)", in[kFeat].d[1], c);
  for (int32_t i = 0; i < 4; ++i) {
    if (knownAndDifferent(in[kPos].d[i], in[kFeat].d[i])) {
      errors.push_back("pos has shape " + dimsToString(in[kPos]) + " but feat has " + dimsToString(in[kFeat]));
      break;
    }
  }
  expectDim(errors, "coarse_attn.shape[0] (N)", in[kCoarse].d[0], n);
  expectDim(errors, "coarse_attn.shape[1] (Q)", in[kCoarse].d[1], q);
  expectDim(errors, "in_proj_weight.shape[0] (3C)", in[kInW].d[0], c3);
  expectDim(errors, "in_proj_weight.shape[1] (C)", in[kInW].d[1], c);
  expectDim(errors, "in_proj_bias.shape[0] (3C)", in[kInB].d[0], c3);
  expectDim(errors, "out_proj_weight.shape[0] (C)", in[kOutW].d[0], c);
  expectDim(errors, "out_proj_weight.shape[1] (C)", in[kOutW].d[1], c);
  expectDim(errors, "out_proj_bias.shape[0] (C)", in[kOutB].d[0], c);
  if (!errors.empty()) return joinErrors(errors);
  // Geometry, once C, H3, W3 and S0 are known (batch and query counts do not affect it).
  if (c >= 0 && in[kFeat].d[2] >= 0 && in[kFeat].d[3] >= 0 && in[kCoarse].d[2] >= 0) {
    FasegTopKCrossAttnShape shape = kernelShape(in, mAttributes);
    if (shape.batch < 0) shape.batch = 1;
    if (shape.num_queries < 0) shape.num_queries = 1;
    char message[512] = {0};
    if (faseg_topk_cross_attn_check(&shape, message, sizeof(message)) != 0) return message;
  }
  return "";
}

int32_t TopKCrossAttnPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                             DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  return configureOneOutput(kTopKCrossAttnName, in, nbInputs, nbOutputs,
                            [this](Dims const* dims, int32_t n) { return checkDims(dims, n); });
}

int32_t TopKCrossAttnPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                                int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != kNbInputs) return -1;
  for (int32_t i = 0; i < nbInputs; ++i) {
    if (inputTypes[i] != DataType::kFLOAT) {
      logError(std::string(kTopKCrossAttnName) + ": every input must be float32 (input " + std::to_string(i) +
               " is not); keep HRCA in fp32 in mixed-precision graphs");
      return -1;
    }
  }
  outputTypes[0] = DataType::kFLOAT;
  return 0;
}

int32_t TopKCrossAttnPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                             nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                             nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                             nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || inputs[kQuery].nbDims != 3) {
    logError(std::string(kTopKCrossAttnName) + ": getOutputShapes needs 8 inputs with query of rank 3");
    return -1;
  }
  outputs[0] = inputs[kQuery];  // output [N, Q, C] = query's shape
  return 0;
}

bool TopKCrossAttnPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                    int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos >= kNbInputs + 1) return false;
  PluginTensorDesc const& desc = inOut[pos].desc;
  return desc.format == TensorFormat::kLINEAR && desc.type == DataType::kFLOAT;
}

int32_t TopKCrossAttnPlugin::getNbOutputs() const noexcept { return 1; }

size_t TopKCrossAttnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                             DynamicPluginTensorDesc const* /*outputs*/,
                                             int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs != kNbInputs) return 0;
  // Upper bound over the profile: every size at its maximum (see faseg_topk_cross_attn_workspace_size).
  Dims maxDims[kNbInputs];
  for (int32_t i = 0; i < kNbInputs; ++i) maxDims[i] = inputs[i].max;
  FasegTopKCrossAttnShape const shape = kernelShape(maxDims, mAttributes);
  return faseg_topk_cross_attn_workspace_size(&shape, /*upper_bound=*/1);
}

char const* TopKCrossAttnPlugin::getTimingCacheID() noexcept { return mDescription.c_str(); }
char const* TopKCrossAttnPlugin::getMetadataString() noexcept { return mDescription.c_str(); }

int32_t TopKCrossAttnPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                           PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
  return checkInputDims(kTopKCrossAttnName, "onShapeChange", in, nbInputs,
                        [this](Dims const* dims, int32_t n) { return checkDims(dims, n); });
}

int32_t TopKCrossAttnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                     void const* const* inputs, void* const* outputs, void* workspace,
                                     cudaStream_t stream) noexcept {
  Dims dims[kNbInputs];
  for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = inputDesc[i].dims;
  FasegTopKCrossAttnShape const shape = kernelShape(dims, mAttributes);
  // TensorRT provides getWorkspaceSize(profile max) bytes, which bounds the exact size for these dims.
  size_t const workspaceSize = faseg_topk_cross_attn_workspace_size(&shape, /*upper_bound=*/0);
  auto const* f = reinterpret_cast<float const* const*>(inputs);
  cudaError_t const status = faseg_topk_cross_attn_forward(
      stream, &shape, f[kQuery], f[kFeat], f[kPos], f[kCoarse], f[kInW], f[kInB], f[kOutW], f[kOutB],
      static_cast<float*>(outputs[0]), workspace, workspaceSize);
  if (status != cudaSuccess) {
    char message[512] = {0};
    faseg_topk_cross_attn_check(&shape, message, sizeof(message));
    logError(std::string(kTopKCrossAttnName) + ": enqueue failed: " + cudaGetErrorString(status) +
             (message[0] ? std::string(" (") + message + ")" : std::string()));
    return -1;
  }
  return 0;
}

nvinfer1::IPluginV3* TopKCrossAttnPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();
}

nvinfer1::PluginFieldCollection const* TopKCrossAttnPlugin::getFieldsToSerialize() noexcept {
  return &mFieldCollection;
}

// ---------------------------------------------------------------------------------------------

TopKCrossAttnPluginCreator::TopKCrossAttnPluginCreator() : mNamespace(kPluginNamespace) {
  mFieldNames = {PluginField(kNumHeads, nullptr, PluginFieldType::kINT32, 1),
                 PluginField(kDivisor, nullptr, PluginFieldType::kINT32, 1),
                 PluginField(kMode, nullptr, PluginFieldType::kINT32, 1),
                 PluginField(kLevel0H, nullptr, PluginFieldType::kINT32, 1),
                 PluginField(kLevel0W, nullptr, PluginFieldType::kINT32, 1)};
  mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
  mFieldCollection.fields = mFieldNames.data();
}

char const* TopKCrossAttnPluginCreator::getPluginName() const noexcept { return kTopKCrossAttnName; }
char const* TopKCrossAttnPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* TopKCrossAttnPluginCreator::getPluginNamespace() const noexcept { return mNamespace.c_str(); }

nvinfer1::PluginFieldCollection const* TopKCrossAttnPluginCreator::getFieldNames() noexcept {
  return &mFieldCollection;
}

nvinfer1::IPluginV3* TopKCrossAttnPluginCreator::createPlugin(char const* /*name*/,
                                                              nvinfer1::PluginFieldCollection const* fc,
                                                              nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    TopKCrossAttnAttributes attributes;
    std::string const error = TopKCrossAttnAttributes::parse(fc, &attributes);
    if (!error.empty()) {
      logError(std::string(kTopKCrossAttnName) + ": " + error);
      return nullptr;
    }
    return new TopKCrossAttnPlugin(attributes, mNamespace);
  } catch (std::exception const& e) {
    logError(std::string(kTopKCrossAttnName) + ": createPlugin failed: " + e.what());
  }
  return nullptr;
}

}  // namespace trt
}  // namespace faseg
