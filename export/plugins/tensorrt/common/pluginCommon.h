// Helpers shared by FASeg's TensorRT plugins: logging through the logger TensorRT hands to the
// library (setLoggerFinder), plugin-field parsing, and shape-check utilities.
//
// Written for FASeg (Apache-2.0). Compiled against the TensorRT 10 headers; the plugin library does
// not link libnvinfer (see fasegPlugins.cpp), so only header-inline TensorRT code may be used here.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace faseg {
namespace trt {

// Name, version and namespace shared by the creators and the plugins (docs/plugin_contract.md §0).
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

// Logs through the ILogger found by the ILoggerFinder given to setLoggerFinder(), or to stderr when
// TensorRT has not provided one (e.g. a host-side test harness).
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;
inline void logError(std::string const& message) noexcept {
  logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}
inline void logWarning(std::string const& message) noexcept {
  logMessage(nvinfer1::ILogger::Severity::kWARNING, message);
}

// Installs the logger finder (called by the exported setLoggerFinder).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

// Reads an integer field (kINT8/16/32/64, length 1) named `name` from fc. Returns true and sets
// *value when found; returns false when absent. A present field with a non-integer type or a length
// other than 1 sets *error.
bool readIntField(nvinfer1::PluginFieldCollection const* fc, char const* name, int64_t* value, std::string* error);

// "[a, b, c]" for messages (-1 for unknown dimensions).
std::string dimsToString(nvinfer1::Dims const& dims);

// True when both dimensions are known (>= 0) and differ.
inline bool knownAndDifferent(int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; }

// Appends "<what> is <got>, expected <want>" to errors when both are known and differ.
void expectDim(std::vector<std::string>& errors, char const* what, int64_t got, int64_t want);

// Joins errors with "; ".
std::string joinErrors(std::vector<std::string> const& errors);

inline nvinfer1::Dims const& dimsOf(nvinfer1::DynamicPluginTensorDesc const& desc) { return desc.desc.dims; }
inline nvinfer1::Dims const& dimsOf(nvinfer1::PluginTensorDesc const& desc) { return desc.dims; }

// Runs checkDims (a callable (Dims const*, int32_t) -> std::string, empty when valid) on the dimensions of
// the nbInputs descriptors in (build-time or run-time ones). Logs "<plugin>: <error>" and returns -1 when they
// are not valid or the check throws; 0 otherwise. `stage` names the calling IPluginV3 method in messages.
template <typename Desc, typename CheckDims>
int32_t checkInputDims(char const* pluginName, char const* stage, Desc const* in, int32_t nbInputs,
                       CheckDims const& checkDims) noexcept {
  try {
    std::vector<nvinfer1::Dims> dims;
    for (int32_t i = 0; i < nbInputs; ++i) dims.push_back(dimsOf(in[i]));
    std::string const error = checkDims(dims.data(), nbInputs);
    if (!error.empty()) {
      logError(std::string(pluginName) + ": " + error);
      return -1;
    }
    return 0;
  } catch (std::exception const& e) {
    logError(std::string(pluginName) + ": " + stage + ": " + e.what());
  }
  return -1;
}

// The configurePlugin of both plugins: exactly one output, and input dimensions that checkDims accepts.
template <typename CheckDims>
int32_t configureOneOutput(char const* pluginName, nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                           int32_t nbOutputs, CheckDims const& checkDims) noexcept {
  if (nbOutputs != 1) {
    logError(std::string(pluginName) + ": expects 1 output, got " + std::to_string(nbOutputs));
    return -1;
  }
  return checkInputDims(pluginName, "configurePlugin", in, nbInputs, checkDims);
}

}  // namespace trt
}  // namespace faseg
