// Run-time choice between the portable and the AVX2 versions of the CPU kernels.
//
// The library is built for the baseline ISA (no -march) with -ffp-contract=off. The AVX2 versions are
// compiled per function (__attribute__((target("avx2"))), never "fma"): they perform the same IEEE float
// operations in the same order as the portable versions, so results are bit-identical on every CPU.
#pragma once

#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASEG_HAVE_AVX2_PATH 1
#include <immintrin.h>
#else
#define FASEG_HAVE_AVX2_PATH 0
#endif

namespace faseg {

// True when the CPU has AVX2 and FASEG_ORT_OPS_PORTABLE is not "1". The variable is read at every call,
// so tests can run both versions in one process and compare them.
inline bool use_avx2_kernels() {
  const char* portable = std::getenv("FASEG_ORT_OPS_PORTABLE");
  if (portable != nullptr && std::strcmp(portable, "1") == 0) return false;
#if FASEG_HAVE_AVX2_PATH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2;
#else
  return false;
#endif
}

}  // namespace faseg
