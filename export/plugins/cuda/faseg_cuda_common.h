// Shared definitions of FASeg's CUDA kernels (C ABI).
//
// Written for FASeg; no code taken from other projects. The kernel headers of this folder expose
// plain C functions (stream, raw device pointers, integers) so that the TensorRT plugins, the ONNX
// Runtime CUDA ops, the PyTorch extension and ctypes can all call the same entry points. No
// TensorRT, ONNX Runtime or PyTorch type appears here.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define FASEG_CUDA_API __declspec(dllexport)
#else
#define FASEG_CUDA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Element type of a floating-point tensor argument.
typedef enum FasegDType {
  FASEG_FLOAT32 = 0,
  FASEG_FLOAT16 = 1,  // IEEE half (storage only: the kernels compute in fp32)
  FASEG_FLOAT64 = 2,  // for gradcheck; computes in fp64
} FasegDType;

// Version of this C ABI; bumped on any incompatible change of a signature or struct.
#define FASEG_CUDA_ABI_VERSION 1
FASEG_CUDA_API int faseg_cuda_abi_version(void);

// cudaGetErrorString of the CUDA runtime linked into the library (callers such as ctypes may not
// have a CUDA runtime of their own).
FASEG_CUDA_API const char* faseg_cuda_error_string(int error);

#ifdef __cplusplus
}  // extern "C"
#endif
