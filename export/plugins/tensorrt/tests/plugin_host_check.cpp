// Host-only check of libfaseg_trt_plugins.so: no GPU and no TensorRT runtime needed.
//
//   plugin_host_check <path/to/libfaseg_trt_plugins.so>
//
// dlopens the library like IPluginRegistry::loadLibrary does, calls the exported getCreators, and
// exercises every creator and plugin method that runs on the host (fields, creation and its
// validation, serialization round trip, output types and shapes, format combinations, shape checks,
// workspace size). It never calls enqueue. Prints one JSON object (read by
// tests/export/test_plugin_sources.py) and exits with 1 when a check fails.
//
// Written for FASeg (Apache-2.0).
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

int gFailures = 0;
std::vector<std::string> gChecks;

std::string quote(std::string const& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void check(bool ok, std::string const& what) {
  gChecks.push_back("{\"check\": " + quote(what) + ", \"ok\": " + (ok ? "true" : "false") + "}");
  if (!ok) {
    ++gFailures;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  }
}

// Collects what the plugins log through the ILoggerFinder given to setLoggerFinder (as TensorRT would).
struct CaptureLogger : ILogger {
  std::vector<std::string> errors;
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) errors.emplace_back(msg);
  }
};
struct CaptureFinder : ILoggerFinder {
  CaptureLogger logger;
  ILogger* findLogger() override { return &logger; }
};

// Expression objects are only passed through by the plugins' getOutputShapes, never evaluated.
struct FakeExpr : IDimensionExpr {
  FakeExpr() { mImpl = nullptr; }
  ~FakeExpr() noexcept override = default;
};
struct FakeBuilder : IExprBuilder {
  FakeBuilder() { mImpl = nullptr; }
  ~FakeBuilder() noexcept override = default;
};

Dims makeDims(std::vector<int64_t> const& d) {
  Dims dims{};
  dims.nbDims = static_cast<int32_t>(d.size());
  for (size_t i = 0; i < d.size(); ++i) dims.d[i] = d[i];
  return dims;
}

DynamicPluginTensorDesc dynDesc(std::vector<int64_t> const& dims, DataType type, std::vector<int64_t> const& max = {}) {
  DynamicPluginTensorDesc d{};
  d.desc.dims = makeDims(dims);
  d.desc.type = type;
  d.desc.format = TensorFormat::kLINEAR;
  d.desc.scale = 1.0f;
  d.min = makeDims(max.empty() ? dims : max);
  d.opt = makeDims(max.empty() ? dims : max);
  d.max = makeDims(max.empty() ? dims : max);
  return d;
}

PluginTensorDesc desc(std::vector<int64_t> const& dims, DataType type) {
  PluginTensorDesc d{};
  d.dims = makeDims(dims);
  d.type = type;
  d.format = TensorFormat::kLINEAR;
  d.scale = 1.0f;
  return d;
}

std::string fieldType(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kINT64: return "int64";
    case PluginFieldType::kFLOAT32: return "float32";
    case PluginFieldType::kCHAR: return "char";
    default: return "other";
  }
}

struct Plugin {
  IPluginV3* plugin = nullptr;
  IPluginV3OneCore* core = nullptr;
  IPluginV3OneBuild* build = nullptr;
  IPluginV3OneRuntime* runtime = nullptr;
  explicit Plugin(IPluginV3* p) : plugin(p) {
    if (p == nullptr) return;
    core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    runtime = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  }
  ~Plugin() { delete plugin; }
  Plugin(Plugin const&) = delete;
  Plugin& operator=(Plugin const&) = delete;
};

// Whether every position of a combination is accepted (positions queried in order, as TensorRT does).
bool accepts(IPluginV3OneBuild* build, std::vector<DataType> const& types, int32_t nbInputs) {
  std::vector<DynamicPluginTensorDesc> io;
  for (DataType t : types) io.push_back(dynDesc({1}, t));
  for (int32_t pos = 0; pos < static_cast<int32_t>(types.size()); ++pos) {
    if (!build->supportsFormatCombination(pos, io.data(), nbInputs, static_cast<int32_t>(types.size()) - nbInputs)) {
      return false;
    }
  }
  return true;
}

PluginFieldCollection collection(std::vector<PluginField> const& fields) {
  return PluginFieldCollection{static_cast<int32_t>(fields.size()), fields.data()};
}

std::map<std::string, int64_t> intFields(PluginFieldCollection const* fc) {
  std::map<std::string, int64_t> out;
  for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.type == PluginFieldType::kINT32 && f.length == 1) out[f.name] = *static_cast<int32_t const*>(f.data);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s libfaseg_trt_plugins.so\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 2;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  check(getCreators != nullptr, "exports getCreators");
  check(setLoggerFinder != nullptr, "exports setLoggerFinder");
  if (getCreators == nullptr || setLoggerFinder == nullptr) return 1;
  static CaptureFinder finder;
  setLoggerFinder(&finder);

  int32_t nbCreators = 0;
  IPluginCreatorInterface* const* creators = getCreators(nbCreators);
  check(nbCreators == 2, "two creators");
  std::map<std::string, IPluginCreatorV3One*> byName;
  std::ostringstream creatorJson;
  creatorJson << "[";
  for (int32_t i = 0; i < nbCreators; ++i) {
    InterfaceInfo const info = creators[i]->getInterfaceInfo();
    check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1,
          "creator " + std::to_string(i) + " is an IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
    byName[creator->getPluginName()] = creator;
    PluginFieldCollection const* names = creator->getFieldNames();
    creatorJson << (i ? ", " : "") << "{\"name\": " << quote(creator->getPluginName())
                << ", \"version\": " << quote(creator->getPluginVersion())
                << ", \"namespace\": " << quote(creator->getPluginNamespace()) << ", \"fields\": {";
    for (int32_t f = 0; names && f < names->nbFields; ++f) {
      creatorJson << (f ? ", " : "") << quote(names->fields[f].name) << ": " << quote(fieldType(names->fields[f].type));
    }
    creatorJson << "}}";
  }
  creatorJson << "]";

  // ---- FASegMSDeformAttn_TRT ----------------------------------------------------------------
  IPluginCreatorV3One* msda = byName["FASegMSDeformAttn_TRT"];
  check(msda != nullptr, "creator FASegMSDeformAttn_TRT");
  size_t msdaSerialized = 99;
  if (msda != nullptr) {
    PluginFieldCollection empty{0, nullptr};
    Plugin p(msda->createPlugin("msda", &empty, TensorRTPhase::kBUILD));
    check(p.plugin && p.core && p.build && p.runtime, "msda: plugin with core/build/runtime capabilities");
    if (p.plugin) {
      check(std::strcmp(p.core->getPluginName(), "FASegMSDeformAttn_TRT") == 0 &&
                std::strcmp(p.core->getPluginVersion(), "1") == 0 && std::strcmp(p.core->getPluginNamespace(), "") == 0,
            "msda: name/version/namespace");
      check(p.build->getNbOutputs() == 1, "msda: one output");
      DataType const f32[5] = {DataType::kFLOAT, DataType::kINT32, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT};
      DataType const f16[5] = {DataType::kHALF, DataType::kINT32, DataType::kINT32, DataType::kHALF, DataType::kHALF};
      DataType out = DataType::kINT8;
      check(p.build->getOutputDataTypes(&out, 1, f32, 5) == 0 && out == DataType::kFLOAT, "msda: fp32 output type");
      check(p.build->getOutputDataTypes(&out, 1, f16, 5) == 0 && out == DataType::kHALF, "msda: fp16 output type");
      auto F = DataType::kFLOAT, H = DataType::kHALF, I = DataType::kINT32, L = DataType::kINT64;
      check(accepts(p.build, {F, I, I, F, F, F}, 5), "msda: accepts fp32 I/O with int32 level tables");
      check(accepts(p.build, {H, I, I, H, H, H}, 5), "msda: accepts fp16 I/O with int32 level tables");
      check(!accepts(p.build, {F, L, L, F, F, F}, 5), "msda: rejects int64 level tables");
      check(!accepts(p.build, {H, I, I, F, F, H}, 5), "msda: rejects mixed value/location types");
      check(!accepts(p.build, {DataType::kBF16, I, I, DataType::kBF16, DataType::kBF16, DataType::kBF16}, 5),
            "msda: rejects bf16");

      FakeExpr e[32];
      DimsExprs in[5];
      int k = 0;
      int const ranks[5] = {4, 2, 1, 6, 5};
      for (int i = 0; i < 5; ++i) {
        in[i].nbDims = ranks[i];
        for (int d = 0; d < ranks[i]; ++d) in[i].d[d] = &e[k++];
      }
      DimsExprs outShape{};
      FakeBuilder builder;
      check(p.build->getOutputShapes(in, 5, nullptr, 0, &outShape, 1, builder) == 0 && outShape.nbDims == 4 &&
                outShape.d[0] == in[0].d[0] && outShape.d[1] == in[3].d[1] && outShape.d[2] == in[0].d[2] &&
                outShape.d[3] == in[0].d[3],
            "msda: output shape [N, Lq, M, D]");

      // value [2, 5376, 8, 32], 3 levels, Lq = 100, P = 4
      std::vector<DynamicPluginTensorDesc> good = {
          dynDesc({-1, 5376, 8, 32}, F), dynDesc({3, 2}, I), dynDesc({3}, I), dynDesc({-1, 100, 8, 3, 4, 2}, F),
          dynDesc({-1, 100, 8, 3, 4}, F)};
      DynamicPluginTensorDesc o = dynDesc({-1, 100, 8, 32}, F);
      check(p.build->configurePlugin(good.data(), 5, &o, 1) == 0, "msda: configurePlugin accepts consistent dims");
      std::vector<DynamicPluginTensorDesc> bad = good;
      bad[4] = dynDesc({-1, 100, 8, 3, 5}, F);
      check(p.build->configurePlugin(bad.data(), 5, &o, 1) != 0, "msda: configurePlugin rejects P mismatch");
      std::vector<PluginTensorDesc> concrete = {desc({2, 5376, 8, 32}, F), desc({3, 2}, I), desc({3}, I),
                                                desc({2, 100, 8, 3, 4, 2}, F), desc({2, 100, 8, 3, 4}, F)};
      PluginTensorDesc co = desc({2, 100, 8, 32}, F);
      check(p.runtime->onShapeChange(concrete.data(), 5, &co, 1) == 0, "msda: onShapeChange accepts valid dims");
      concrete[3] = desc({2, 100, 4, 3, 4, 2}, F);
      check(p.runtime->onShapeChange(concrete.data(), 5, &co, 1) != 0, "msda: onShapeChange rejects M mismatch");
      check(p.build->getWorkspaceSize(good.data(), 5, &o, 1) == 0, "msda: no workspace");
      msdaSerialized = static_cast<size_t>(p.runtime->getFieldsToSerialize()->nbFields);
      check(msdaSerialized == 0, "msda: nothing serialized");
      Plugin attached(p.runtime->attachToContext(nullptr));
      check(attached.plugin != nullptr && attached.core != nullptr, "msda: attachToContext clones");
    }
  }

  // ---- FASegTopKCrossAttn_TRT ---------------------------------------------------------------
  IPluginCreatorV3One* topk = byName["FASegTopKCrossAttn_TRT"];
  check(topk != nullptr, "creator FASegTopKCrossAttn_TRT");
  std::string topkSerialized = "{}";
  unsigned long long workspace = 0;
  if (topk != nullptr) {
    int32_t heads = 8, divisor = 32, mode = 0, zero = 0, two = 2, bad_mode = 2;
    int64_t heads64 = 8;
    std::vector<PluginField> fields = {PluginField("num_heads", &heads, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc = collection(fields);
    Plugin p(topk->createPlugin("hrca", &fc, TensorRTPhase::kBUILD));
    check(p.plugin && p.core && p.build && p.runtime, "topk: plugin from num_heads only (defaults for the rest)");

    std::vector<PluginField> f64 = {PluginField("num_heads", &heads64, PluginFieldType::kINT64, 1)};
    PluginFieldCollection fc64 = collection(f64);
    Plugin p64(topk->createPlugin("hrca", &fc64, TensorRTPhase::kBUILD));
    check(p64.plugin != nullptr, "topk: accepts an int64 num_heads field");

    PluginFieldCollection none{0, nullptr};
    size_t const logged = finder.logger.errors.size();
    Plugin missing(topk->createPlugin("hrca", &none, TensorRTPhase::kBUILD));
    check(missing.plugin == nullptr, "topk: num_heads is required");
    check(finder.logger.errors.size() == logged + 1 &&
              finder.logger.errors.back().find("num_heads is required") != std::string::npos,
          "topk: the error reaches the logger given to setLoggerFinder");
    std::vector<PluginField> badMode = {PluginField("num_heads", &heads, PluginFieldType::kINT32, 1),
                                        PluginField("mode", &bad_mode, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fcBadMode = collection(badMode);
    Plugin rejectedMode(topk->createPlugin("hrca", &fcBadMode, TensorRTPhase::kBUILD));
    check(rejectedMode.plugin == nullptr, "topk: rejects mode 2");
    std::vector<PluginField> badLevel = {PluginField("num_heads", &heads, PluginFieldType::kINT32, 1),
                                         PluginField("level0_h", &two, PluginFieldType::kINT32, 1),
                                         PluginField("level0_w", &zero, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fcBadLevel = collection(badLevel);
    Plugin rejectedLevel(topk->createPlugin("hrca", &fcBadLevel, TensorRTPhase::kBUILD));
    check(rejectedLevel.plugin == nullptr, "topk: rejects level0_h without level0_w");
    std::vector<PluginField> badDivisor = {PluginField("num_heads", &heads, PluginFieldType::kINT32, 1),
                                           PluginField("divisor", &zero, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fcBadDivisor = collection(badDivisor);
    Plugin rejectedDivisor(topk->createPlugin("hrca", &fcBadDivisor, TensorRTPhase::kBUILD));
    check(rejectedDivisor.plugin == nullptr, "topk: rejects divisor 0");

    if (p.plugin) {
      check(std::strcmp(p.core->getPluginName(), "FASegTopKCrossAttn_TRT") == 0 &&
                std::strcmp(p.core->getPluginVersion(), "1") == 0,
            "topk: name/version");
      auto serialized = intFields(p.runtime->getFieldsToSerialize());
      std::ostringstream s;
      s << "{";
      bool first = true;
      for (auto const& kv : serialized) {
        s << (first ? "" : ", ") << quote(kv.first) << ": " << kv.second;
        first = false;
      }
      s << "}";
      topkSerialized = s.str();
      check(serialized.size() == 5 && serialized["num_heads"] == 8 && serialized["divisor"] == divisor &&
                serialized["mode"] == mode && serialized["level0_h"] == 0 && serialized["level0_w"] == 0,
            "topk: serializes the five attributes");
      Plugin restored(topk->createPlugin("hrca", p.runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
      check(restored.plugin != nullptr && intFields(restored.runtime->getFieldsToSerialize()) == serialized,
            "topk: serialization round trip");
      Plugin cloned(p.plugin->clone());
      check(cloned.plugin != nullptr && intFields(cloned.runtime->getFieldsToSerialize()) == serialized,
            "topk: clone keeps the attributes");

      auto F = DataType::kFLOAT, H = DataType::kHALF;
      DataType types[8] = {F, F, F, F, F, F, F, F};
      DataType out = DataType::kINT8;
      check(p.build->getOutputDataTypes(&out, 1, types, 8) == 0 && out == F, "topk: float32 output");
      types[1] = H;
      check(p.build->getOutputDataTypes(&out, 1, types, 8) != 0, "topk: rejects a float16 input");
      check(accepts(p.build, {F, F, F, F, F, F, F, F, F}, 8), "topk: accepts all-float32");
      check(!accepts(p.build, {F, H, F, F, F, F, F, F, F}, 8), "topk: rejects float16 feat");

      FakeExpr e[32];
      DimsExprs in[8];
      int k = 0;
      int const ranks[8] = {3, 4, 4, 3, 2, 1, 2, 1};
      for (int i = 0; i < 8; ++i) {
        in[i].nbDims = ranks[i];
        for (int d = 0; d < ranks[i]; ++d) in[i].d[d] = &e[k++];
      }
      DimsExprs outShape{};
      FakeBuilder builder;
      check(p.build->getOutputShapes(in, 8, nullptr, 0, &outShape, 1, builder) == 0 && outShape.nbDims == 3 &&
                outShape.d[0] == in[0].d[0] && outShape.d[1] == in[0].d[1] && outShape.d[2] == in[0].d[2],
            "topk: output shape = query shape");

      // 512 x 512 input: 1/4 map 128 x 128, 1/32 map 16 x 16 (S0 = 256), C = 256, Q = 100, batch 1..8.
      auto inputs = [&](int64_t h3, int64_t w3, int64_t s0, std::vector<int64_t> maxBatch) {
        int64_t const nb = maxBatch.empty() ? -1 : maxBatch[0];
        return std::vector<DynamicPluginTensorDesc>{
            dynDesc({-1, 100, 256}, F, {nb, 100, 256}),    dynDesc({-1, 256, h3, w3}, F, {nb, 256, h3, w3}),
            dynDesc({-1, 256, h3, w3}, F, {nb, 256, h3, w3}), dynDesc({-1, 100, s0}, F, {nb, 100, s0}),
            dynDesc({768, 256}, F),                       dynDesc({768}, F),
            dynDesc({256, 256}, F),                       dynDesc({256}, F)};
      };
      auto good = inputs(128, 128, 256, {8});
      DynamicPluginTensorDesc o = dynDesc({-1, 100, 256}, F, {8, 100, 256});
      check(p.build->configurePlugin(good.data(), 8, &o, 1) == 0, "topk: configurePlugin accepts 512x512 dims");
      auto badGeometry = inputs(128, 120, 256, {8});
      check(p.build->configurePlugin(badGeometry.data(), 8, &o, 1) != 0,
            "topk: configurePlugin rejects a 1/4 map that is not a multiple of the 1/32 map");
      workspace = p.build->getWorkspaceSize(good.data(), 8, &o, 1);
      check(workspace > 0, "topk: workspace for batch 8");

      std::vector<PluginTensorDesc> concrete;
      for (auto const& d : good) concrete.push_back(desc(std::vector<int64_t>(d.max.d, d.max.d + d.max.nbDims), F));
      PluginTensorDesc co = desc({8, 100, 256}, F);
      check(p.runtime->onShapeChange(concrete.data(), 8, &co, 1) == 0, "topk: onShapeChange accepts valid dims");
      concrete[3] = desc({8, 100, 7}, F);  // S0 = 7: no valid 1/32 map
      check(p.runtime->onShapeChange(concrete.data(), 8, &co, 1) != 0, "topk: onShapeChange rejects S0 = 7");
      Plugin attached(p.runtime->attachToContext(nullptr));
      check(attached.plugin != nullptr && intFields(attached.runtime->getFieldsToSerialize()) == serialized,
            "topk: attachToContext clones");
    }
  }

  std::printf("{\"creators\": %s, \"msda_serialized_fields\": %zu, \"topk_serialized\": %s, "
              "\"topk_workspace_bytes_512x512_batch8\": %llu, \"failures\": %d, \"checks\": [",
              creatorJson.str().c_str(), msdaSerialized, topkSerialized.c_str(), workspace, gFailures);
  for (size_t i = 0; i < gChecks.size(); ++i) std::printf("%s%s", i ? ", " : "", gChecks[i].c_str());
  std::printf("], \"logged_errors\": [");
  for (size_t i = 0; i < finder.logger.errors.size(); ++i) {
    std::printf("%s%s", i ? ", " : "", quote(finder.logger.errors[i]).c_str());
  }
  std::printf("]}\n");
  return gFailures == 0 ? 0 : 1;
}
