#include "pluginCommon.h"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>

namespace faseg {
namespace trt {

namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

char const* severityName(nvinfer1::ILogger::Severity severity) {
  switch (severity) {
    case nvinfer1::ILogger::Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case nvinfer1::ILogger::Severity::kERROR: return "ERROR";
    case nvinfer1::ILogger::Severity::kWARNING: return "WARNING";
    case nvinfer1::ILogger::Severity::kINFO: return "INFO";
    default: return "VERBOSE";
  }
}

}  // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  std::lock_guard<std::mutex> lock(gLoggerMutex);
  if (gLoggerFinder == nullptr && finder != nullptr) gLoggerFinder = finder;
}

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept {
  try {
    std::string const line = "[faseg_trt_plugins] " + message;
    nvinfer1::ILogger* logger = nullptr;
    {
      std::lock_guard<std::mutex> lock(gLoggerMutex);
      if (gLoggerFinder != nullptr) logger = gLoggerFinder->findLogger();
    }
    if (logger != nullptr) {
      logger->log(severity, line.c_str());
    } else {
      std::fprintf(stderr, "[%s] %s\n", severityName(severity), line.c_str());
    }
  } catch (...) {
    // Logging must never throw across the plugin boundary.
  }
}

bool readIntField(nvinfer1::PluginFieldCollection const* fc, char const* name, int64_t* value, std::string* error) {
  if (fc == nullptr) return false;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    nvinfer1::PluginField const& f = fc->fields[i];
    if (f.name == nullptr || std::strcmp(f.name, name) != 0) continue;
    if (f.length != 1 || f.data == nullptr) {
      *error = std::string("field ") + name + " must hold exactly one integer, got length " + std::to_string(f.length);
      return true;
    }
    switch (f.type) {
      case nvinfer1::PluginFieldType::kINT8: *value = *static_cast<int8_t const*>(f.data); return true;
      case nvinfer1::PluginFieldType::kINT16: *value = *static_cast<int16_t const*>(f.data); return true;
      case nvinfer1::PluginFieldType::kINT32: *value = *static_cast<int32_t const*>(f.data); return true;
      case nvinfer1::PluginFieldType::kINT64: *value = *static_cast<int64_t const*>(f.data); return true;
      default:
        *error = std::string("field ") + name + " must be an integer field (kINT32 from an ONNX INT attribute)";
        return true;
    }
  }
  return false;
}

std::string dimsToString(nvinfer1::Dims const& dims) {
  std::ostringstream s;
  s << "[";
  for (int32_t i = 0; i < dims.nbDims; ++i) s << (i ? ", " : "") << dims.d[i];
  s << "]";
  return s.str();
}

void expectDim(std::vector<std::string>& errors, char const* what, int64_t got, int64_t want) {
  if (knownAndDifferent(got, want)) {
    errors.push_back(std::string(what) + " is " + std::to_string(got) + ", expected " + std::to_string(want));
  }
}

std::string joinErrors(std::vector<std::string> const& errors) {
  std::string out;
  for (size_t i = 0; i < errors.size(); ++i) out += (i ? "; " : "") + errors[i];
  return out;
}

}  // namespace trt
}  // namespace faseg
