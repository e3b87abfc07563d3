// GPU harness of libfaseg_trt_plugins.so: runs one plugin the way a TensorRT engine does, without TensorRT.
//
//   faseg_trt_plugin_harness <path/to/libfaseg_trt_plugins.so> <case_dir> [--host-only]
//
// <case_dir>/case.txt describes one plugin call, one item per line:
//   plugin <name>                           creator name (FASegMSDeformAttn_TRT, FASegTopKCrossAttn_TRT)
//   field <name> int32|int64 <value>        a PluginField of the creation PluginFieldCollection (0..n lines)
//   input <float32|float16|int32|int64|bfloat16> <d0> <d1> ...
//                                           input i, raw little-endian C-order data in <case_dir>/input<i>.bin
//
// The call sequence is TensorRT's for an IPluginV3 (IPluginV3OneCore/Build/Runtime): dlopen the library
// (IPluginRegistry::loadLibrary), setLoggerFinder, getCreators, creator->createPlugin(name, fields, kBUILD),
// getCapabilityInterface, getNbOutputs, getOutputDataTypes, getOutputShapes through this file's own
// IExprBuilder of constant dimensions (the output dims must evaluate to constants), supportsFormatCombination
// for every position, configurePlugin, getWorkspaceSize, getFieldsToSerialize; then as the engine at run time:
// attachToContext, onShapeChange, enqueue on device buffers and a stream (the output poisoned with NaN bytes
// first). Then a serialize round trip: createPlugin(name, getFieldsToSerialize(), kRUNTIME), attachToContext,
// onShapeChange, enqueue again: the output must be bit-identical (the forward kernels are deterministic).
//
// Writes <case_dir>/output0.bin (the first enqueue's output) and <case_dir>/report.json (also printed):
// every step with ok/detail, the output type and dims, the workspace bytes, the serialized fields and what the
// plugins logged. --host-only stops before the first CUDA call (no GPU needed): every host step and the
// re-creation from the serialized fields still run. Exit code: 0 all steps passed, 1 a step failed, 2 usage,
// 3 no CUDA device (without --host-only).
// tests/export/test_trt_plugin_harness.py writes the cases and compares output0.bin with the PyTorch reference.
//
// Written for FASeg (Apache-2.0).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

std::string quote(std::string const& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// ---- report ---------------------------------------------------------------------------------------------

struct Report {
  std::vector<std::string> steps;
  int failures = 0;
  bool step(std::string const& name, bool ok, std::string const& detail = "") {
    steps.push_back("{\"step\": " + quote(name) + ", \"ok\": " + (ok ? "true" : "false") +
                    ", \"detail\": " + quote(detail) + "}");
    if (!ok) {
      ++failures;
      std::fprintf(stderr, "FAILED: %s %s\n", name.c_str(), detail.c_str());
    }
    return ok;
  }
};

struct CaptureLogger : ILogger {
  std::vector<std::string> messages;
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kWARNING) messages.emplace_back(msg);
  }
};
struct CaptureFinder : ILoggerFinder {
  CaptureLogger logger;
  ILogger* findLogger() override { return &logger; }
};

// ---- a minimal IExprBuilder over constant dimensions ------------------------------------------------------
// IDimensionExpr / IExprBuilder forward to implementation objects (apiv::VDimensionExpr / VExprBuilder) that
// TensorRT normally provides; these are this harness's own, for concrete (build-profile-free) dimensions.

class ConstantImpl : public apiv::VDimensionExpr {
 public:
  explicit ConstantImpl(int64_t value) : mValue(value) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return mValue; }
  bool isSizeTensor() const override { return false; }

 private:
  int64_t mValue;
};

class ConstantExpr : public IDimensionExpr {
 public:
  explicit ConstantExpr(int64_t value) : mStorage(value) { mImpl = &mStorage; }
  ~ConstantExpr() noexcept override = default;

 private:
  ConstantImpl mStorage;
};

class ConstantBuilderImpl : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t value) override {
    mExprs.push_back(std::make_unique<ConstantExpr>(value));
    return mExprs.back().get();
  }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
    if (!a.isConstant() || !b.isConstant()) return nullptr;
    int64_t const x = a.getConstantValue(), y = b.getConstantValue();
    switch (op) {
      case DimensionOperation::kSUM: return constant(x + y);
      case DimensionOperation::kPROD: return constant(x * y);
      case DimensionOperation::kMAX: return constant(x > y ? x : y);
      case DimensionOperation::kMIN: return constant(x < y ? x : y);
      case DimensionOperation::kSUB: return constant(x - y);
      case DimensionOperation::kEQUAL: return constant(x == y ? 1 : 0);
      case DimensionOperation::kLESS: return constant(x < y ? 1 : 0);
      case DimensionOperation::kFLOOR_DIV: {
        if (y == 0) return nullptr;
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return constant(q);
      }
      case DimensionOperation::kCEIL_DIV: {
        if (y == 0) return nullptr;
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) == (y < 0))) ++q;
        return constant(q);
      }
    }
    return nullptr;
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;  // no data-dependent shapes in FASeg's plugins
  }

 private:
  std::vector<std::unique_ptr<ConstantExpr>> mExprs;
};

class ConstantBuilder : public IExprBuilder {
 public:
  ConstantBuilder() { mImpl = &mStorage; }
  ~ConstantBuilder() noexcept override = default;

 private:
  ConstantBuilderImpl mStorage;
};

// The per-context resources handed to attachToContext (FASeg's plugins use none of them).
class NoResources : public IPluginResourceContext {
 public:
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// ---- the case ---------------------------------------------------------------------------------------------

struct TypeInfo {
  char const* name;
  DataType type;
  size_t bytes;
};
TypeInfo const kTypes[] = {{"float32", DataType::kFLOAT, 4},
                           {"float16", DataType::kHALF, 2},
                           {"bfloat16", DataType::kBF16, 2},
                           {"int32", DataType::kINT32, 4},
                           {"int64", DataType::kINT64, 8}};

TypeInfo const* typeByName(std::string const& name) {
  for (auto const& t : kTypes) {
    if (name == t.name) return &t;
  }
  return nullptr;
}
TypeInfo const* typeOf(DataType type) {
  for (auto const& t : kTypes) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

struct Input {
  TypeInfo const* type = nullptr;
  std::vector<int64_t> dims;
  std::vector<char> bytes;
  int64_t count() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
};

struct Field {
  std::string name;
  PluginFieldType type;
  int64_t value;
  int32_t value32;
};

struct Case {
  std::string plugin;
  std::vector<Field> fields;
  std::vector<Input> inputs;
};

std::string readCase(std::string const& dir, Case* c) {
  std::ifstream in(dir + "/case.txt");
  if (!in) return "cannot read " + dir + "/case.txt";
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string kind;
    if (!(words >> kind) || kind[0] == '#') continue;
    if (kind == "plugin") {
      words >> c->plugin;
    } else if (kind == "field") {
      Field f;
      std::string type;
      if (!(words >> f.name >> type >> f.value) || (type != "int32" && type != "int64")) {
        return "bad field line: " + line;
      }
      f.type = type == "int32" ? PluginFieldType::kINT32 : PluginFieldType::kINT64;
      f.value32 = static_cast<int32_t>(f.value);
      c->fields.push_back(f);
    } else if (kind == "input") {
      Input t;
      std::string type;
      words >> type;
      t.type = typeByName(type);
      if (t.type == nullptr) return "unknown input type in: " + line;
      int64_t d;
      while (words >> d) t.dims.push_back(d);
      std::string const path = dir + "/input" + std::to_string(c->inputs.size()) + ".bin";
      std::ifstream data(path, std::ios::binary);
      if (!data) return "cannot read " + path;
      t.bytes.assign(std::istreambuf_iterator<char>(data), std::istreambuf_iterator<char>());
      size_t const want = static_cast<size_t>(t.count()) * t.type->bytes;
      if (t.bytes.size() != want) {
        return path + " has " + std::to_string(t.bytes.size()) + " bytes, expected " + std::to_string(want);
      }
      c->inputs.push_back(std::move(t));
    } else {
      return "unknown line: " + line;
    }
  }
  if (c->plugin.empty()) return "case.txt names no plugin";
  return "";
}

Dims makeDims(std::vector<int64_t> const& d) {
  Dims dims{};
  dims.nbDims = static_cast<int32_t>(d.size());
  for (size_t i = 0; i < d.size(); ++i) dims.d[i] = d[i];
  return dims;
}

std::string dimsString(std::vector<int64_t> const& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// ---- plugin handles ---------------------------------------------------------------------------------------

struct Plugin {
  IPluginV3* plugin = nullptr;
  IPluginV3OneCore* core = nullptr;
  IPluginV3OneBuild* build = nullptr;
  IPluginV3OneRuntime* runtime = nullptr;
  explicit Plugin(IPluginV3* p = nullptr) { reset(p); }
  void reset(IPluginV3* p) {
    delete plugin;
    plugin = p;
    core = nullptr;
    build = nullptr;
    runtime = nullptr;
    if (p == nullptr) return;
    core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    runtime = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  }
  ~Plugin() { delete plugin; }
  Plugin(Plugin const&) = delete;
  Plugin& operator=(Plugin const&) = delete;
};

// A deep copy of a PluginFieldCollection (the plugin owns the memory getFieldsToSerialize points to, and an
// engine stores the bytes, not the pointers).
struct OwnedFields {
  std::vector<std::string> names;
  std::vector<std::vector<char>> data;
  std::vector<PluginField> fields;
  PluginFieldCollection collection{0, nullptr};
  std::string json = "{}";

  static size_t elementBytes(PluginFieldType t) {
    switch (t) {
      case PluginFieldType::kINT8:
      case PluginFieldType::kCHAR:
      case PluginFieldType::kUNKNOWN: return 1;
      case PluginFieldType::kFLOAT16:
      case PluginFieldType::kINT16:
      case PluginFieldType::kBF16: return 2;
      case PluginFieldType::kFLOAT64:
      case PluginFieldType::kINT64: return 8;
      default: return 4;
    }
  }

  void copy(PluginFieldCollection const* fc) {
    int32_t const n = fc ? fc->nbFields : 0;
    names.resize(n);
    data.resize(n);
    std::ostringstream j;
    j << "{";
    for (int32_t i = 0; i < n; ++i) {
      PluginField const& f = fc->fields[i];
      names[i] = f.name;
      size_t const bytes = elementBytes(f.type) * static_cast<size_t>(f.length);
      auto const* src = static_cast<char const*>(f.data);
      data[i].assign(src, src + bytes);
      int64_t value = 0;
      if (f.type == PluginFieldType::kINT32 && f.length == 1) value = *static_cast<int32_t const*>(f.data);
      if (f.type == PluginFieldType::kINT64 && f.length == 1) value = *static_cast<int64_t const*>(f.data);
      j << (i ? ", " : "") << quote(f.name) << ": " << value;
    }
    j << "}";
    json = j.str();
    fields.clear();
    for (int32_t i = 0; i < n; ++i) {
      fields.emplace_back(names[i].c_str(), data[i].data(), fc->fields[i].type, fc->fields[i].length);
    }
    collection = PluginFieldCollection{n, fields.data()};
  }
};

// ---- device helpers ---------------------------------------------------------------------------------------

bool cudaOk(Report& r, char const* what, cudaError_t status) {
  return r.step(what, status == cudaSuccess, status == cudaSuccess ? "" : cudaGetErrorString(status));
}

struct DeviceBuffers {
  std::vector<void*> inputs;
  void* output = nullptr;
  void* workspace = nullptr;
  cudaStream_t stream = nullptr;
  ~DeviceBuffers() {
    for (void* p : inputs) cudaFree(p);
    if (output) cudaFree(output);
    if (workspace) cudaFree(workspace);
    if (stream) cudaStreamDestroy(stream);
  }
};

// attachToContext + onShapeChange (+ enqueue unless hostOnly) of `plugin`, as an engine's execution context.
bool runAsEngine(Report& r, std::string const& tag, Plugin& built, std::vector<PluginTensorDesc> const& inDesc,
                 PluginTensorDesc const& outDesc, DeviceBuffers* dev, size_t outBytes, std::vector<char>* result) {
  NoResources resources;
  Plugin attached(built.runtime->attachToContext(&resources));
  if (!r.step(tag + "attachToContext", attached.plugin && attached.runtime)) return false;
  int32_t const nbIn = static_cast<int32_t>(inDesc.size());
  if (!r.step(tag + "onShapeChange", attached.runtime->onShapeChange(inDesc.data(), nbIn, &outDesc, 1) == 0)) {
    return false;
  }
  if (dev == nullptr) return true;
  if (!cudaOk(r, (tag + "poison output").c_str(), cudaMemsetAsync(dev->output, 0xFF, outBytes, dev->stream))) {
    return false;
  }
  std::vector<void const*> ins(dev->inputs.begin(), dev->inputs.end());
  void* outs[1] = {dev->output};
  int32_t const status =
      attached.runtime->enqueue(inDesc.data(), &outDesc, ins.data(), outs, dev->workspace, dev->stream);
  if (!r.step(tag + "enqueue", status == 0, "returned " + std::to_string(status))) return false;
  if (!cudaOk(r, (tag + "stream sync").c_str(), cudaStreamSynchronize(dev->stream))) return false;
  if (!cudaOk(r, (tag + "no pending CUDA error").c_str(), cudaGetLastError())) return false;
  result->resize(outBytes);
  return cudaOk(r, (tag + "copy output").c_str(), cudaMemcpy(result->data(), dev->output, outBytes, cudaMemcpyDeviceToHost));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4 || (argc == 4 && std::strcmp(argv[3], "--host-only") != 0)) {
    std::fprintf(stderr, "usage: %s libfaseg_trt_plugins.so CASE_DIR [--host-only]\n", argv[0]);
    return 2;
  }
  std::string const dir = argv[2];
  bool const hostOnly = argc == 4;
  Case c;
  std::string const caseError = readCase(dir, &c);
  if (!caseError.empty()) {
    std::fprintf(stderr, "%s\n", caseError.c_str());
    return 2;
  }

  Report r;
  static CaptureFinder finder;
  std::string enqueueNote = hostOnly ? "skipped: --host-only" : "";
  std::string outputType = "?";
  std::vector<int64_t> outDims;
  size_t workspace = 0;
  OwnedFields serialized;
  bool roundtripIdentical = false;
  int exitCode = 0;

  [&] {
    int deviceCount = 0;
    if (!hostOnly) {
      cudaError_t const status = cudaGetDeviceCount(&deviceCount);
      if (status != cudaSuccess || deviceCount == 0) {
        enqueueNote = std::string("no CUDA device: ") +
                      (status != cudaSuccess ? cudaGetErrorString(status) : "cudaGetDeviceCount returned 0");
        r.step("CUDA device", false, enqueueNote);
        exitCode = 3;
        return;
      }
    }
    // -- IPluginRegistry::loadLibrary ------------------------------------------------------------------
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!r.step("dlopen", lib != nullptr, lib ? argv[1] : dlerror())) return;
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    if (!r.step("exports getCreators and setLoggerFinder", getCreators && setLoggerFinder)) return;
    setLoggerFinder(&finder);
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < nbCreators; ++i) {
      InterfaceInfo const info = creators[i]->getInterfaceInfo();
      if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
      auto* candidate = static_cast<IPluginCreatorV3One*>(creators[i]);
      if (c.plugin == candidate->getPluginName() && std::strcmp(candidate->getPluginVersion(), "1") == 0) {
        creator = candidate;
      }
    }
    if (!r.step("getCreators has " + c.plugin + " v1", creator != nullptr)) return;

    // -- network definition: createPlugin with the node's fields ------------------------------------------
    std::vector<PluginField> fields;
    for (auto const& f : c.fields) {
      void const* data = f.type == PluginFieldType::kINT32 ? static_cast<void const*>(&f.value32) : &f.value;
      fields.emplace_back(f.name.c_str(), data, f.type, 1);
    }
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    Plugin built(creator->createPlugin("harness", &fc, TensorRTPhase::kBUILD));
    if (!r.step("createPlugin(kBUILD)", built.plugin && built.core && built.build && built.runtime)) return;
    r.step("plugin name/version", c.plugin == built.core->getPluginName() &&
                                      std::strcmp(built.core->getPluginVersion(), "1") == 0);
    int32_t const nbOut = built.build->getNbOutputs();
    if (!r.step("getNbOutputs == 1", nbOut == 1, std::to_string(nbOut))) return;
    int32_t const nbIn = static_cast<int32_t>(c.inputs.size());

    std::vector<DataType> inTypes;
    for (auto const& t : c.inputs) inTypes.push_back(t.type->type);
    DataType outType = DataType::kINT8;
    if (!r.step("getOutputDataTypes", built.build->getOutputDataTypes(&outType, 1, inTypes.data(), nbIn) == 0)) return;
    TypeInfo const* outInfo = typeOf(outType);
    if (!r.step("output type is a tensor type", outInfo != nullptr)) return;
    outputType = outInfo->name;

    ConstantBuilder builder;
    std::vector<DimsExprs> inExprs(nbIn);
    for (int32_t i = 0; i < nbIn; ++i) {
      inExprs[i].nbDims = static_cast<int32_t>(c.inputs[i].dims.size());
      for (int32_t d = 0; d < inExprs[i].nbDims; ++d) inExprs[i].d[d] = builder.constant(c.inputs[i].dims[d]);
    }
    DimsExprs outExprs{};
    if (!r.step("getOutputShapes", built.build->getOutputShapes(inExprs.data(), nbIn, nullptr, 0, &outExprs, 1,
                                                                builder) == 0)) {
      return;
    }
    bool constant = outExprs.nbDims > 0;
    for (int32_t d = 0; d < outExprs.nbDims; ++d) {
      if (outExprs.d[d] == nullptr || !outExprs.d[d]->isConstant()) {
        constant = false;
        break;
      }
      outDims.push_back(outExprs.d[d]->getConstantValue());
    }
    if (!r.step("output dims evaluate to constants", constant, dimsString(outDims))) return;

    // -- builder: formats, configuration, workspace ------------------------------------------------------
    std::vector<DynamicPluginTensorDesc> io(nbIn + 1);
    for (int32_t i = 0; i <= nbIn; ++i) {
      std::vector<int64_t> const& dims = i < nbIn ? c.inputs[i].dims : outDims;
      DynamicPluginTensorDesc& d = io[i];
      d.desc.dims = makeDims(dims);
      d.desc.type = i < nbIn ? inTypes[i] : outType;
      d.desc.format = TensorFormat::kLINEAR;
      d.desc.scale = 1.0f;
      d.min = d.opt = d.max = d.desc.dims;
    }
    bool formats = true;
    for (int32_t pos = 0; pos <= nbIn; ++pos) formats &= built.build->supportsFormatCombination(pos, io.data(), nbIn, 1);
    r.step("supportsFormatCombination (every position, LINEAR)", formats);
    if (!r.step("configurePlugin", built.build->configurePlugin(io.data(), nbIn, &io[nbIn], 1) == 0)) return;
    workspace = built.build->getWorkspaceSize(io.data(), nbIn, &io[nbIn], 1);
    r.step("getWorkspaceSize", true, std::to_string(workspace) + " bytes");
    serialized.copy(built.runtime->getFieldsToSerialize());
    r.step("getFieldsToSerialize", true, serialized.json);

    // -- engine: execution context -----------------------------------------------------------------------
    std::vector<PluginTensorDesc> inDesc;
    for (int32_t i = 0; i < nbIn; ++i) inDesc.push_back(io[i].desc);
    PluginTensorDesc const outDesc = io[nbIn].desc;
    int64_t outCount = 1;
    for (int64_t d : outDims) outCount *= d;
    size_t const outBytes = static_cast<size_t>(outCount) * outInfo->bytes;

    std::unique_ptr<DeviceBuffers> dev;
    if (!hostOnly) {
      dev = std::make_unique<DeviceBuffers>();
      if (!cudaOk(r, "cudaStreamCreate", cudaStreamCreateWithFlags(&dev->stream, cudaStreamNonBlocking))) return;
      for (auto const& t : c.inputs) {
        void* p = nullptr;
        if (!cudaOk(r, "cudaMalloc input", cudaMalloc(&p, t.bytes.empty() ? 1 : t.bytes.size()))) return;
        dev->inputs.push_back(p);
        if (!cudaOk(r, "copy input", cudaMemcpy(p, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice))) return;
      }
      if (!cudaOk(r, "cudaMalloc output", cudaMalloc(&dev->output, outBytes ? outBytes : 1))) return;
      if (workspace > 0 && !cudaOk(r, "cudaMalloc workspace", cudaMalloc(&dev->workspace, workspace))) return;
    }
    std::vector<char> first, second;
    if (!runAsEngine(r, "", built, inDesc, outDesc, dev.get(), outBytes, &first)) return;
    if (!hostOnly) {
      std::ofstream out(dir + "/output0.bin", std::ios::binary);
      out.write(first.data(), static_cast<std::streamsize>(first.size()));
      r.step("write output0.bin", static_cast<bool>(out));
      enqueueNote = "ran";
    }

    // -- serialize round trip: the engine re-creates the plugin from the stored fields -----------------
    Plugin restored(creator->createPlugin("harness", &serialized.collection, TensorRTPhase::kRUNTIME));
    if (!r.step("createPlugin(kRUNTIME) from the serialized fields", restored.plugin && restored.runtime)) return;
    OwnedFields again;
    again.copy(restored.runtime->getFieldsToSerialize());
    r.step("re-created plugin serializes the same fields", again.json == serialized.json, again.json);
    if (!runAsEngine(r, "re-created: ", restored, inDesc, outDesc, dev.get(), outBytes, &second)) return;
    if (!hostOnly) {
      roundtripIdentical = first == second;
      r.step("re-created plugin's output is bit-identical", roundtripIdentical);
    }
  }();

  std::ostringstream json;
  json << "{\"plugin\": " << quote(c.plugin) << ", \"host_only\": " << (hostOnly ? "true" : "false")
       << ", \"enqueue\": " << quote(enqueueNote) << ", \"output_type\": " << quote(outputType)
       << ", \"output_dims\": " << dimsString(outDims) << ", \"workspace_bytes\": " << workspace
       << ", \"serialized_fields\": " << serialized.json
       << ", \"roundtrip_identical\": " << (roundtripIdentical ? "true" : "false") << ", \"failures\": " << r.failures
       << ", \"steps\": [";
  for (size_t i = 0; i < r.steps.size(); ++i) json << (i ? ", " : "") << r.steps[i];
  json << "], \"logged\": [";
  for (size_t i = 0; i < finder.logger.messages.size(); ++i) {
    json << (i ? ", " : "") << quote(finder.logger.messages[i]);
  }
  json << "]}\n";
  std::ofstream(dir + "/report.json") << json.str();
  std::printf("%s", json.str().c_str());
  if (exitCode != 0) return exitCode;
  return r.failures == 0 ? 0 : 1;
}
