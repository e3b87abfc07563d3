// Shared by the ONNX Runtime custom-op sources of FASeg: the CPU kernels (faseg_ort_ops.cc) and the CUDA
// kernels (faseg_ort_cuda_ops.cc). Op names, errors that carry an ORT error code and become an OrtStatus at
// the C boundary, and the shape checks both kernels run on their inputs. Include after
// <onnxruntime_cxx_api.h>.
#pragma once

#include <cstdint>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

namespace faseg_ort {

constexpr const char* kDomain = "faseg";
constexpr const char* kMSDeformAttnName = "FASegMSDeformAttn_TRT";
constexpr const char* kTopKCrossAttnName = "FASegTopKCrossAttn_TRT";

// Error carrying an ORT error code; converted to an OrtStatus by guarded().
struct OpError {
  OrtErrorCode code;
  std::string message;
};

[[noreturn]] inline void fail(const std::string& op, const std::string& message,
                              OrtErrorCode code = ORT_INVALID_ARGUMENT) {
  throw OpError{code, op + ": " + message};
}

// Runs fn and converts any exception into an OrtStatus made with api (nullptr on success).
template <typename Fn>
OrtStatusPtr guarded(const OrtApi* api, Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const OpError& e) {
    return api->CreateStatus(e.code, e.message.c_str());
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, "faseg custom op: unknown C++ exception");
  }
}

// Reads an optional int attribute; returns fallback when it is absent (*present tells which).
inline int64_t int_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t fallback,
                        bool* present = nullptr) {
  int64_t value = 0;
  OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &value);
  if (present) *present = status == nullptr;
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return fallback;
  }
  return value;
}

// Reads and checks the FASegTopKCrossAttn_TRT attributes (docs/plugin_contract.md) into a, any struct with
// int64 fields num_heads, divisor, mode (0 window, 1 bilinear), level0_h and level0_w.
template <typename Attrs>
void read_topk_attrs(const OrtApi* api, const OrtKernelInfo* info, Attrs& a) {
  const char* op = kTopKCrossAttnName;
  bool has_heads = false;
  a.num_heads = int_attr(api, info, "num_heads", 0, &has_heads);
  a.divisor = int_attr(api, info, "divisor", 32);
  a.mode = int_attr(api, info, "mode", 0);
  a.level0_h = int_attr(api, info, "level0_h", 0);
  a.level0_w = int_attr(api, info, "level0_w", 0);
  if (!has_heads) fail(op, "the int attribute num_heads is required");
  if (a.num_heads < 1) fail(op, "num_heads must be >= 1, got " + std::to_string(a.num_heads));
  if (a.divisor < 1) fail(op, "divisor must be >= 1, got " + std::to_string(a.divisor));
  if (a.mode != 0 && a.mode != 1) fail(op, "mode must be 0 (window) or 1 (bilinear), got " + std::to_string(a.mode));
  if (a.level0_h < 0 || a.level0_w < 0 || ((a.level0_h == 0) != (a.level0_w == 0))) {
    fail(op, "level0_h and level0_w must both be >= 1, or both 0 (derive from the inputs); got " +
                 std::to_string(a.level0_h) + ", " + std::to_string(a.level0_w));
  }
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

inline int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

inline void expect_rank(const char* op, const char* name, const std::vector<int64_t>& shape, size_t rank,
                        const char* layout) {
  if (shape.size() != rank) {
    std::ostringstream m;
    m << name << " must have rank " << rank << " " << layout << ", got shape " << shape_str(shape);
    fail(op, m.str());
  }
}

inline void expect_dim(const char* op, const char* what, int64_t got, int64_t want) {
  if (got != want) fail(op, std::string(what) + " is " + std::to_string(got) + ", expected " + std::to_string(want));
}

}  // namespace faseg_ort
