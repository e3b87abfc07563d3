// Minimal parallel-for hook shared by the CPU kernels.
//
// The kernels never spawn threads themselves: the caller passes a ParallelFor that runs
// body(begin, end) over disjoint sub-ranges covering [0, total) (possibly concurrently). The ORT
// custom-op layer maps it onto ORT's intra-op thread pool; an empty ParallelFor runs serially.
// No ONNX Runtime or TensorRT type appears here, so CUDA/TensorRT code can share these headers.
#pragma once

#include <cstdint>
#include <functional>

namespace faseg {

using RangeBody = std::function<void(int64_t begin, int64_t end)>;
using ParallelFor = std::function<void(int64_t total, int64_t grain, const RangeBody& body)>;

// Runs body over [0, total) with pf, or serially when pf is empty. grain = smallest useful chunk.
inline void parallel_for(const ParallelFor& pf, int64_t total, int64_t grain, const RangeBody& body) {
  if (total <= 0) return;
  if (!pf || total <= grain) {
    body(0, total);
    return;
  }
  pf(total, grain < 1 ? 1 : grain, body);
}

}  // namespace faseg
