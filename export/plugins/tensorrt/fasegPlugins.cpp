// libfaseg_trt_plugins.so: entry points of FASeg's TensorRT plugin library.
//
// The library registers its creators dynamically: TensorRT's IPluginRegistry::loadLibrary (Python
// `trt.get_plugin_registry().load_library(path)`, `trtexec --dynamicPlugins=path`, polygraphy
// `--plugins path`) looks up the two exported functions below. The library therefore needs no
// libnvinfer at link time (no REGISTER_TENSORRT_PLUGIN, which calls getPluginRegistry()), and it
// exports nothing else (see exports.map). Loading it with ctypes.CDLL alone registers nothing.
//
// Written for FASeg (Apache-2.0), after the pattern documented for TensorRT plugin libraries.
#include <NvInferRuntime.h>

#include "common/pluginCommon.h"
#include "msDeformAttnPlugin/msDeformAttnPlugin.h"
#include "topkCrossAttnPlugin/topkCrossAttnPlugin.h"

#if defined(_WIN32)
#define FASEG_TRT_EXPORT __declspec(dllexport)
#else
#define FASEG_TRT_EXPORT __attribute__((visibility("default")))
#endif

extern "C" {

// The creators of FASegMSDeformAttn_TRT v1 and FASegTopKCrossAttn_TRT v1 (namespace ""). The
// objects live for the whole process (TensorRT keeps the pointers after loadLibrary).
FASEG_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static faseg::trt::MSDeformAttnPluginCreator msDeformAttnCreator;
  static faseg::trt::TopKCrossAttnPluginCreator topkCrossAttnCreator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&msDeformAttnCreator, &topkCrossAttnCreator};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

FASEG_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { faseg::trt::setLoggerFinder(finder); }

}  // extern "C"
