// Multi-scale deformable attention, CUDA kernels. See ms_deform_attn_kernel.h for the contract.
//
// Forward: one thread per output element (n, q, m, d), so the D threads of one (n, q, m) read
// consecutive channels of each bilinear neighbour (coalesced) and share the location/weight loads.
// Backward: the same mapping when D is a power of two <= 32, with the per-sample reductions over d
// (attention-weight and location gradients) done with warp shuffles; otherwise one thread per
// sample (n, q, m, l, p) looping over d. grad_value is accumulated with atomicAdd.
#include "ms_deform_attn_kernel.h"

#include <cuda_fp16.h>

#include <climits>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxLevels = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

// Accumulation type: fp32 for fp32/fp16 storage, fp64 for fp64.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }

// Rounded multiply/subtract without FMA contraction, so the pixel coordinate is computed exactly as
// the CPU op (built with -ffp-contract=off) computes it.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

struct LevelInfo {
  int h;  // 0 marks a level that is skipped because its table entry does not fit in `value`
  int w;
  long long start;
};

// Copies the level tables into shared memory (all threads of the block must call it).
__device__ void load_levels(LevelInfo* levels, const int32_t* __restrict__ shapes,
                            const int32_t* __restrict__ starts, int num_levels, long long num_value) {
  for (int l = threadIdx.x; l < num_levels; l += blockDim.x) {
    const int h = shapes[2 * l];
    const int w = shapes[2 * l + 1];
    const long long start = starts[l];
    const bool ok = h >= 1 && w >= 1 && start >= 0 && start + static_cast<long long>(h) * w <= num_value;
    levels[l] = LevelInfo{ok ? h : 0, ok ? w : 0, start};
  }
  __syncthreads();
}

// Bilinear footprint of one normalised location on an h x w map (pixel centres at integers).
template <typename acc_t>
struct Footprint {
  bool inside = false;  // false: every neighbour is off the map (or the location is not finite)
  int x0 = 0, y0 = 0;
  acc_t fx = 0, fy = 0;
  bool x0_in = false, x1_in = false, y0_in = false, y1_in = false;
};

template <typename acc_t>
__device__ __forceinline__ Footprint<acc_t> footprint(acc_t loc_x, acc_t loc_y, int h, int w) {
  Footprint<acc_t> f;
  const acc_t wf = static_cast<acc_t>(w), hf = static_cast<acc_t>(h);
  const acc_t x = sub_rn(mul_rn(loc_x, wf), acc_t(0.5));
  const acc_t y = sub_rn(mul_rn(loc_y, hf), acc_t(0.5));
  f.inside = x > acc_t(-1) && y > acc_t(-1) && x < wf && y < hf;  // comparisons with NaN are false
  if (!f.inside) return f;
  const acc_t xf = floor(x), yf = floor(y);
  f.x0 = static_cast<int>(xf);
  f.y0 = static_cast<int>(yf);
  f.fx = x - xf;
  f.fy = y - yf;
  f.x0_in = f.x0 >= 0;
  f.x1_in = f.x0 + 1 <= w - 1;
  f.y0_in = f.y0 >= 0;
  f.y1_in = f.y0 + 1 <= h - 1;
  return f;
}

template <typename scalar_t, typename coord_t>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const scalar_t* __restrict__ value, const int32_t* __restrict__ shapes,
                        const int32_t* __restrict__ starts, const coord_t* __restrict__ locations,
                        const coord_t* __restrict__ weights, scalar_t* __restrict__ output, long long total,
                        long long num_value, int num_heads, int head_dim, int num_levels, int num_queries,
                        int num_points) {
  using acc_t = typename AccType<scalar_t>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  LevelInfo* levels = reinterpret_cast<LevelInfo*>(smem_raw);
  load_levels(levels, shapes, starts, num_levels, num_value);

  const int M = num_heads, D = head_dim, L = num_levels, P = num_points;
  const long long pixel_stride = static_cast<long long>(M) * D;
  const long long grid_stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += grid_stride) {
    const int d = static_cast<int>(idx % D);
    const long long item = idx / D;  // ((n * Lq) + q) * M + m
    const int m = static_cast<int>(item % M);
    const long long n = item / (static_cast<long long>(M) * num_queries);
    const coord_t* loc = locations + item * L * P * 2;
    const coord_t* attn = weights + item * L * P;
    acc_t acc = 0;
    for (int l = 0; l < L; ++l) {
      const LevelInfo lv = levels[l];
      if (lv.h == 0) continue;
      // value[n, start + y * W + x, m, d]
      const scalar_t* v = value + ((n * num_value + lv.start) * M + m) * D + d;
      for (int p = 0; p < P; ++p) {
        const int s = l * P + p;
        const Footprint<acc_t> f =
            footprint<acc_t>(static_cast<acc_t>(load(loc + 2 * s)), static_cast<acc_t>(load(loc + 2 * s + 1)),
                             lv.h, lv.w);
        if (!f.inside) continue;
        const acc_t a = static_cast<acc_t>(load(attn + s));
        const acc_t gx = acc_t(1) - f.fx, gy = acc_t(1) - f.fy;
        const long long r0 = static_cast<long long>(f.y0) * lv.w, r1 = r0 + lv.w;
        if (f.y0_in && f.x0_in) acc += (a * (gx * gy)) * static_cast<acc_t>(load(v + (r0 + f.x0) * pixel_stride));
        if (f.y0_in && f.x1_in) acc += (a * (f.fx * gy)) * static_cast<acc_t>(load(v + (r0 + f.x0 + 1) * pixel_stride));
        if (f.y1_in && f.x0_in) acc += (a * (gx * f.fy)) * static_cast<acc_t>(load(v + (r1 + f.x0) * pixel_stride));
        if (f.y1_in && f.x1_in) acc += (a * (f.fx * f.fy)) * static_cast<acc_t>(load(v + (r1 + f.x0 + 1) * pixel_stride));
      }
    }
    store(output + idx, acc);
  }
}

// Gradient contributions of one sample for one channel d. Adds to grad_value directly.
template <typename scalar_t>
struct SampleGrad {
  scalar_t attn = 0, x = 0, y = 0;
};

template <typename scalar_t>
__device__ __forceinline__ void sample_backward(const scalar_t* __restrict__ v, scalar_t* __restrict__ gv,
                                                long long pixel_stride, const LevelInfo& lv,
                                                const Footprint<scalar_t>& f, scalar_t a, scalar_t go,
                                                SampleGrad<scalar_t>& g) {
  const long long r0 = static_cast<long long>(f.y0) * lv.w, r1 = r0 + lv.w;
  const bool in00 = f.y0_in && f.x0_in, in01 = f.y0_in && f.x1_in;
  const bool in10 = f.y1_in && f.x0_in, in11 = f.y1_in && f.x1_in;
  const long long o00 = (r0 + f.x0) * pixel_stride, o01 = (r0 + f.x0 + 1) * pixel_stride;
  const long long o10 = (r1 + f.x0) * pixel_stride, o11 = (r1 + f.x0 + 1) * pixel_stride;
  const scalar_t v00 = in00 ? load(v + o00) : scalar_t(0);
  const scalar_t v01 = in01 ? load(v + o01) : scalar_t(0);
  const scalar_t v10 = in10 ? load(v + o10) : scalar_t(0);
  const scalar_t v11 = in11 ? load(v + o11) : scalar_t(0);
  const scalar_t gx = scalar_t(1) - f.fx, gy = scalar_t(1) - f.fy;
  const scalar_t w00 = gx * gy, w01 = f.fx * gy, w10 = gx * f.fy, w11 = f.fx * f.fy;
  g.attn += go * (w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11);
  const scalar_t ga = go * a;
  // d sample / d x and d y (pixel units); the chain factor W (resp. H) of x = loc_x * W - 0.5 is
  // applied by the caller.
  g.x += ga * ((v01 - v00) * gy + (v11 - v10) * f.fy);
  g.y += ga * ((v10 - v00) * gx + (v11 - v01) * f.fx);
  if (in00) atomicAdd(gv + o00, ga * w00);
  if (in01) atomicAdd(gv + o01, ga * w01);
  if (in10) atomicAdd(gv + o10, ga * w10);
  if (in11) atomicAdd(gv + o11, ga * w11);
}

// Backward, one thread per (n, q, m, d); D is a power of two <= 32, so the D lanes of one (n, q, m)
// form an aligned segment of a warp and reduce with xor shuffles. No grid-stride loop: every lane
// of every warp must reach the shuffles.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    msda_backward_segment_kernel(const scalar_t* __restrict__ value, const int32_t* __restrict__ shapes,
                                 const int32_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                                 const scalar_t* __restrict__ weights, const scalar_t* __restrict__ grad_output,
                                 scalar_t* __restrict__ grad_value, scalar_t* __restrict__ grad_locations,
                                 scalar_t* __restrict__ grad_weights, long long total, long long num_value,
                                 int num_heads, int head_dim, int num_levels, int num_queries, int num_points) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  LevelInfo* levels = reinterpret_cast<LevelInfo*>(smem_raw);
  load_levels(levels, shapes, starts, num_levels, num_value);

  const int M = num_heads, D = head_dim, L = num_levels, P = num_points;
  const long long pixel_stride = static_cast<long long>(M) * D;
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = idx < total;
  const long long safe = active ? idx : 0;
  const int d = static_cast<int>(safe % D);
  const long long item = safe / D;
  const int m = static_cast<int>(item % M);
  const long long n = item / (static_cast<long long>(M) * num_queries);
  const scalar_t* loc = locations + item * L * P * 2;
  const scalar_t* attn = weights + item * L * P;
  const scalar_t go = active ? grad_output[idx] : scalar_t(0);

  for (int l = 0; l < L; ++l) {
    const LevelInfo lv = levels[l];
    const long long base = ((n * num_value + lv.start) * M + m) * D + d;
    for (int p = 0; p < P; ++p) {
      const int s = l * P + p;
      SampleGrad<scalar_t> g;
      if (active && lv.h != 0) {
        const Footprint<scalar_t> f = footprint<scalar_t>(load(loc + 2 * s), load(loc + 2 * s + 1), lv.h, lv.w);
        if (f.inside) {
          sample_backward<scalar_t>(value + base, grad_value + base, pixel_stride, lv, f, load(attn + s), go, g);
          g.x *= static_cast<scalar_t>(lv.w);
          g.y *= static_cast<scalar_t>(lv.h);
        }
      }
      for (int offset = D >> 1; offset > 0; offset >>= 1) {
        g.attn += __shfl_xor_sync(kFullMask, g.attn, offset);
        g.x += __shfl_xor_sync(kFullMask, g.x, offset);
        g.y += __shfl_xor_sync(kFullMask, g.y, offset);
      }
      if (active && d == 0) {
        const long long o = item * L * P + s;
        grad_weights[o] = g.attn;
        grad_locations[2 * o] = g.x;
        grad_locations[2 * o + 1] = g.y;
      }
    }
  }
}

// Backward for any D: one thread per sample (n, q, m, l, p), looping over the channels.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    msda_backward_sample_kernel(const scalar_t* __restrict__ value, const int32_t* __restrict__ shapes,
                                const int32_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                                const scalar_t* __restrict__ weights, const scalar_t* __restrict__ grad_output,
                                scalar_t* __restrict__ grad_value, scalar_t* __restrict__ grad_locations,
                                scalar_t* __restrict__ grad_weights, long long total, long long num_value,
                                int num_heads, int head_dim, int num_levels, int num_queries, int num_points) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  LevelInfo* levels = reinterpret_cast<LevelInfo*>(smem_raw);
  load_levels(levels, shapes, starts, num_levels, num_value);

  const int M = num_heads, D = head_dim, L = num_levels, P = num_points;
  const long long pixel_stride = static_cast<long long>(M) * D;
  const long long grid_stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += grid_stride) {
    const int s = static_cast<int>(idx % (L * P));
    const long long item = idx / (L * P);
    const int l = s / P;
    const int m = static_cast<int>(item % M);
    const long long n = item / (static_cast<long long>(M) * num_queries);
    const LevelInfo lv = levels[l];
    SampleGrad<scalar_t> g;
    if (lv.h != 0) {
      const scalar_t* loc = locations + idx * 2;
      const Footprint<scalar_t> f = footprint<scalar_t>(load(loc), load(loc + 1), lv.h, lv.w);
      if (f.inside) {
        const scalar_t a = load(weights + idx);
        const long long base = ((n * num_value + lv.start) * M + m) * D;
        const scalar_t* go = grad_output + item * D;
        for (int d = 0; d < D; ++d) {
          sample_backward<scalar_t>(value + base + d, grad_value + base + d, pixel_stride, lv, f, a, load(go + d), g);
        }
        g.x *= static_cast<scalar_t>(lv.w);
        g.y *= static_cast<scalar_t>(lv.h);
      }
    }
    grad_weights[idx] = g.attn;
    grad_locations[2 * idx] = g.x;
    grad_locations[2 * idx + 1] = g.y;
  }
}

bool sizes_ok(int64_t batch, int64_t num_value, int64_t num_heads, int64_t head_dim, int64_t num_levels,
              int64_t num_queries, int64_t num_points) {
  const int64_t dims[] = {batch, num_value, num_heads, head_dim, num_levels, num_queries, num_points};
  for (int64_t v : dims) {
    if (v < 0 || v > INT_MAX) return false;
  }
  return num_levels <= kMaxLevels && num_levels * num_points <= INT_MAX / 2;
}

unsigned grid_for(long long total) {
  const long long blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (1LL << 20) ? blocks : (1LL << 20));
}

template <typename scalar_t, typename coord_t>
cudaError_t launch_forward(cudaStream_t stream, const void* value, const int32_t* shapes, const int32_t* starts,
                           const void* locations, const void* weights, void* output, int64_t batch,
                           int64_t num_value, int64_t num_heads, int64_t head_dim, int64_t num_levels,
                           int64_t num_queries, int64_t num_points) {
  const long long total = static_cast<long long>(batch) * num_queries * num_heads * head_dim;
  if (total == 0) return cudaSuccess;
  msda_forward_kernel<scalar_t, coord_t>
      <<<grid_for(total), kThreads, sizeof(LevelInfo) * static_cast<size_t>(num_levels), stream>>>(
          static_cast<const scalar_t*>(value), shapes, starts, static_cast<const coord_t*>(locations),
          static_cast<const coord_t*>(weights), static_cast<scalar_t*>(output), total, num_value,
          static_cast<int>(num_heads), static_cast<int>(head_dim), static_cast<int>(num_levels),
          static_cast<int>(num_queries), static_cast<int>(num_points));
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_backward(cudaStream_t stream, const void* value, const int32_t* shapes, const int32_t* starts,
                            const void* locations, const void* weights, const void* grad_output, void* grad_value,
                            void* grad_locations, void* grad_weights, int64_t batch, int64_t num_value,
                            int64_t num_heads, int64_t head_dim, int64_t num_levels, int64_t num_queries,
                            int64_t num_points) {
  const size_t value_bytes = sizeof(scalar_t) * static_cast<size_t>(batch) * num_value * num_heads * head_dim;
  if (value_bytes > 0) {
    const cudaError_t err = cudaMemsetAsync(grad_value, 0, value_bytes, stream);
    if (err != cudaSuccess) return err;
  }
  const long long items = static_cast<long long>(batch) * num_queries * num_heads;
  if (items == 0 || num_levels * num_points == 0) return cudaSuccess;
  const size_t smem = sizeof(LevelInfo) * static_cast<size_t>(num_levels);
  const auto* v = static_cast<const scalar_t*>(value);
  const auto* loc = static_cast<const scalar_t*>(locations);
  const auto* w = static_cast<const scalar_t*>(weights);
  const auto* go = static_cast<const scalar_t*>(grad_output);
  auto* gv = static_cast<scalar_t*>(grad_value);
  auto* gl = static_cast<scalar_t*>(grad_locations);
  auto* gw = static_cast<scalar_t*>(grad_weights);
  const bool segment = head_dim >= 1 && head_dim <= 32 && (head_dim & (head_dim - 1)) == 0;
  if (segment) {
    const long long total = items * head_dim;
    const long long blocks = (total + kThreads - 1) / kThreads;
    if (blocks > INT_MAX) return cudaErrorInvalidValue;
    msda_backward_segment_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        v, shapes, starts, loc, w, go, gv, gl, gw, total, num_value, static_cast<int>(num_heads),
        static_cast<int>(head_dim), static_cast<int>(num_levels), static_cast<int>(num_queries),
        static_cast<int>(num_points));
  } else {
    const long long total = items * num_levels * num_points;
    msda_backward_sample_kernel<scalar_t><<<grid_for(total), kThreads, smem, stream>>>(
        v, shapes, starts, loc, w, go, gv, gl, gw, total, num_value, static_cast<int>(num_heads),
        static_cast<int>(head_dim), static_cast<int>(num_levels), static_cast<int>(num_queries),
        static_cast<int>(num_points));
  }
  return cudaGetLastError();
}

}  // namespace

extern "C" {

FASEG_CUDA_API int faseg_cuda_abi_version(void) { return FASEG_CUDA_ABI_VERSION; }

FASEG_CUDA_API const char* faseg_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

FASEG_CUDA_API cudaError_t faseg_ms_deform_attn_forward(cudaStream_t stream, int value_type, int coord_type,
                                                        const void* value, const int32_t* spatial_shapes,
                                                        const int32_t* level_start_index,
                                                        const void* sampling_locations,
                                                        const void* attention_weights, void* output, int64_t batch,
                                                        int64_t num_value, int64_t num_heads, int64_t head_dim,
                                                        int64_t num_levels, int64_t num_queries,
                                                        int64_t num_points) {
  if (!sizes_ok(batch, num_value, num_heads, head_dim, num_levels, num_queries, num_points)) {
    return cudaErrorInvalidValue;
  }
#define FASEG_MSDA_FORWARD(S, C)                                                                              \
  launch_forward<S, C>(stream, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, \
                       output, batch, num_value, num_heads, head_dim, num_levels, num_queries, num_points)
  if (value_type == FASEG_FLOAT32 && coord_type == FASEG_FLOAT32) return FASEG_MSDA_FORWARD(float, float);
  if (value_type == FASEG_FLOAT16 && coord_type == FASEG_FLOAT16) return FASEG_MSDA_FORWARD(__half, __half);
  if (value_type == FASEG_FLOAT16 && coord_type == FASEG_FLOAT32) return FASEG_MSDA_FORWARD(__half, float);
  if (value_type == FASEG_FLOAT64 && coord_type == FASEG_FLOAT64) return FASEG_MSDA_FORWARD(double, double);
#undef FASEG_MSDA_FORWARD
  return cudaErrorInvalidValue;
}

FASEG_CUDA_API cudaError_t faseg_ms_deform_attn_backward(
    cudaStream_t stream, int dtype, const void* value, const int32_t* spatial_shapes,
    const int32_t* level_start_index, const void* sampling_locations, const void* attention_weights,
    const void* grad_output, void* grad_value, void* grad_sampling_locations, void* grad_attention_weights,
    int64_t batch, int64_t num_value, int64_t num_heads, int64_t head_dim, int64_t num_levels, int64_t num_queries,
    int64_t num_points) {
  if (!sizes_ok(batch, num_value, num_heads, head_dim, num_levels, num_queries, num_points)) {
    return cudaErrorInvalidValue;
  }
  if (dtype == FASEG_FLOAT32) {
    return launch_backward<float>(stream, value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, grad_output, grad_value, grad_sampling_locations,
                                  grad_attention_weights, batch, num_value, num_heads, head_dim, num_levels,
                                  num_queries, num_points);
  }
  if (dtype == FASEG_FLOAT64) {
    return launch_backward<double>(stream, value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights, grad_output, grad_value, grad_sampling_locations,
                                   grad_attention_weights, batch, num_value, num_heads, head_dim, num_levels,
                                   num_queries, num_points);
  }
  return cudaErrorInvalidValue;
}

}  // extern "C"
