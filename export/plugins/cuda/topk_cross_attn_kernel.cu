// HRCA top-k cross-attention, CUDA kernels. See topk_cross_attn_kernel.h for the contract.
//
// The validation and geometry (k, window, 1/32 map) come from faseg::topk_cross_attn_plan, the same
// host function the ONNX Runtime CPU op uses, so every implementation rejects the same shapes with
// the same message.
#include "topk_cross_attn_kernel.h"

#include <climits>
#include <cmath>
#include <cstdio>
#include <string>

#include "../ort/topk_cross_attn_cpu.h"

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kSelectThreads = 1024;
constexpr int kAttnThreads = 128;
constexpr size_t kAlign = 256;

// ---------------------------------------------------------------------------------------------
// Host-side planning
// ---------------------------------------------------------------------------------------------

faseg::TopKCrossAttnDims to_dims(const FasegTopKCrossAttnShape& s) {
  faseg::TopKCrossAttnDims d;
  d.batch = s.batch;
  d.num_queries = s.num_queries;
  d.channels = s.channels;
  d.hr_h = s.hr_h;
  d.hr_w = s.hr_w;
  d.num_tokens = s.num_tokens;
  d.num_heads = s.num_heads;
  d.divisor = s.divisor;
  d.mode = s.mode;
  d.level0_h = s.level0_h;
  d.level0_w = s.level0_w;
  return d;
}

// Full validation: the CPU op's plan plus the limits of these kernels. Returns "" when valid.
std::string check(const FasegTopKCrossAttnShape& s, faseg::TopKCrossAttnPlan* plan) {
  if (s.batch < 0 || s.num_queries < 0) return "batch and query counts must be >= 0";
  std::string message = faseg::topk_cross_attn_plan(to_dims(s), plan);
  if (!message.empty()) return message;
  if (plan->head_dim > FASEG_TOPK_MAX_HEAD_DIM) {
    return "head dim C / num_heads = " + std::to_string(plan->head_dim) + " exceeds the CUDA kernel's limit of " +
           std::to_string(FASEG_TOPK_MAX_HEAD_DIM);
  }
  const long long hw = static_cast<long long>(s.hr_h) * s.hr_w;
  if (hw > INT_MAX || s.channels > INT_MAX / 4 || s.num_queries > INT_MAX || s.batch > 65535 ||
      plan->num_memory * s.batch > INT_MAX || s.num_queries * s.batch > INT_MAX) {
    return "sizes exceed the CUDA kernel's 32-bit index range";
  }
  return "";
}

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Byte offsets of the workspace buffers. The selection-only path uses the prefix [0, mem).
struct Layout {
  size_t score = 0, up = 0, selected = 0, mem = 0, key_in = 0, k_proj = 0, q_proj = 0, ctx = 0, total = 0;
};

Layout layout(const FasegTopKCrossAttnShape& s, long long num_memory) {
  const size_t n = static_cast<size_t>(s.batch), c = static_cast<size_t>(s.channels);
  const size_t nk = static_cast<size_t>(num_memory), q = static_cast<size_t>(s.num_queries);
  const size_t hw = static_cast<size_t>(s.hr_h) * static_cast<size_t>(s.hr_w);
  Layout l;
  size_t offset = 0;
  auto take = [&offset](size_t bytes) {
    const size_t at = offset;
    offset += align_up(bytes);
    return at;
  };
  l.score = take(sizeof(double) * n * static_cast<size_t>(s.num_tokens));
  l.up = take(s.mode == faseg::kTopKBilinear ? sizeof(double) * n * hw : 0);
  l.selected = take(sizeof(int32_t) * n * nk);
  l.mem = take(sizeof(float) * n * nk * c);
  l.key_in = take(sizeof(float) * n * nk * c);  // reused for the V projection
  l.k_proj = take(sizeof(float) * n * nk * c);
  l.q_proj = take(sizeof(float) * n * q * c);
  l.ctx = take(sizeof(float) * n * q * c);
  l.total = offset;
  return l;
}

// ---------------------------------------------------------------------------------------------
// Kernels: score, upsampling, selection
// ---------------------------------------------------------------------------------------------

// score[n, s] = sum_q coarse[n, q, s], fp64, increasing q (the CPU op's order, so bit-identical).
__global__ void __launch_bounds__(kThreads)
    score_kernel(const float* __restrict__ coarse, double* __restrict__ score, int num_queries, int num_tokens) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  const int n = blockIdx.y;
  if (s >= num_tokens) return;
  const float* p = coarse + static_cast<size_t>(n) * num_queries * num_tokens + s;
  double acc = 0.0;
  for (int q = 0; q < num_queries; ++q) acc = __dadd_rn(acc, static_cast<double>(p[static_cast<size_t>(q) * num_tokens]));
  score[static_cast<size_t>(n) * num_tokens + s] = acc;
}

struct Axis {
  int i0, i1;
  float l0, l1;
};

// F.interpolate(mode="bilinear", align_corners=False) source index and weights for one output
// coordinate, in fp32 with every operation rounded separately (no FMA), as the CPU op computes it.
__device__ __forceinline__ Axis resize_axis(int dst, int in, int out) {
  if (in == out) return Axis{dst, dst, 1.0f, 0.0f};
  const float scale = __fdiv_rn(static_cast<float>(in), static_cast<float>(out));
  float src = __fsub_rn(__fmul_rn(scale, __fadd_rn(static_cast<float>(dst), 0.5f)), 0.5f);
  if (src < 0.0f) src = 0.0f;
  const int lo = min(static_cast<int>(src), in - 1);
  Axis a;
  a.i0 = lo;
  a.i1 = lo + (lo < in - 1 ? 1 : 0);
  a.l1 = fminf(fmaxf(__fsub_rn(src, static_cast<float>(lo)), 0.0f), 1.0f);
  a.l0 = __fsub_rn(1.0f, a.l1);
  return a;
}

// up[n, y, x] = l0y * (l0x * s[y0, x0] + l1x * s[y0, x1]) + l1y * (l0x * s[y1, x0] + l1x * s[y1, x1]).
__global__ void __launch_bounds__(kThreads)
    upsample_kernel(const double* __restrict__ score, double* __restrict__ up, long long total, int h0, int w0,
                    int hr_h, int hr_w) {
  const long long grid_stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long hw = static_cast<long long>(hr_h) * hr_w;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += grid_stride) {
    const long long n = idx / hw;
    const int pixel = static_cast<int>(idx % hw);
    const int y = pixel / hr_w, x = pixel % hr_w;
    const Axis ay = resize_axis(y, h0, hr_h), ax = resize_axis(x, w0, hr_w);
    const double* s = score + n * h0 * w0;
    const double a0 = ay.l0, a1 = ay.l1, b0 = ax.l0, b1 = ax.l1;
    const double top = __dadd_rn(__dmul_rn(b0, s[ay.i0 * w0 + ax.i0]), __dmul_rn(b1, s[ay.i0 * w0 + ax.i1]));
    const double bottom = __dadd_rn(__dmul_rn(b0, s[ay.i1 * w0 + ax.i0]), __dmul_rn(b1, s[ay.i1 * w0 + ax.i1]));
    up[idx] = __dadd_rn(__dmul_rn(a0, top), __dmul_rn(a1, bottom));
  }
}

// Order-preserving key of the contract's ranking: larger value -> larger key, NaN above every
// number (all NaNs equal), -0 equal to +0. Ties are then broken by index in the compaction.
__device__ __forceinline__ unsigned long long rank_key(double v) {
  if (isnan(v)) return ~0ULL;
  if (v == 0.0) v = 0.0;
  const unsigned long long bits = static_cast<unsigned long long>(__double_as_longlong(v));
  return (bits & 0x8000000000000000ULL) ? ~bits : (bits | 0x8000000000000000ULL);
}

// Exclusive prefix sum of v over the block (blockDim.x a multiple of 32); *total = block sum.
// warp_sums must hold 32 ints of shared memory. All threads must call it.
__device__ int block_exclusive_scan(int v, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  int x = v;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int y = __shfl_up_sync(kFullMask, x, offset);
    if (lane >= offset) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < num_warps ? warp_sums[lane] : 0;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int y = __shfl_up_sync(kFullMask, w, offset);
      if (lane >= offset) w += y;
    }
    if (lane < num_warps) warp_sums[lane] = w;
  }
  __syncthreads();
  const int before = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[num_warps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return before + x - v;
}

// One block per batch element: writes the indices of the `count` first entries of values[n, 0:R] in
// ranking order (descending, NaN first, ties -> lower index) into selected[n, 0:count], in increasing
// index order. Radix select (8 passes of 8 bits) finds the count-th key T; then an ordered block-wide
// compaction keeps every key > T and the lowest-index entries equal to T.
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const double* __restrict__ values, long long num_values, int count, int32_t* __restrict__ selected,
                  long long selected_stride) {
  __shared__ unsigned int hist[256];
  __shared__ unsigned long long s_prefix;
  __shared__ int s_remaining;
  __shared__ int warp_sums[32];
  const double* vals = values + static_cast<long long>(blockIdx.x) * num_values;
  int32_t* out = selected + static_cast<long long>(blockIdx.x) * selected_stride;

  unsigned long long prefix = 0, mask = 0;
  int remaining = count;  // rank of the wanted key among the keys that match `prefix` on `mask`
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (long long i = threadIdx.x; i < num_values; i += blockDim.x) {
      const unsigned long long key = rank_key(vals[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, digit = 0;
      for (int d = 255; d >= 0; --d) {
        const int c = static_cast<int>(hist[d]);
        if (above + c >= remaining) {
          digit = d;
          break;
        }
        above += c;
      }
      s_prefix = prefix | (static_cast<unsigned long long>(digit) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255ULL << shift;
    __syncthreads();
  }
  const unsigned long long threshold = prefix;
  const int take_equal = remaining;  // how many entries equal to the threshold belong to the set

  int equal_seen = 0, written = 0;
  for (long long base = 0; base < num_values && written < count; base += blockDim.x) {
    const long long i = base + threadIdx.x;
    const bool valid = i < num_values;
    const unsigned long long key = valid ? rank_key(vals[i]) : 0ULL;
    const int greater = valid && key > threshold;
    const int equal = valid && key == threshold;
    int equal_total = 0, take_total = 0;
    const int equal_rank = equal_seen + block_exclusive_scan(equal, warp_sums, &equal_total);
    const int take = greater || (equal && equal_rank < take_equal);
    const int at = written + block_exclusive_scan(take, warp_sums, &take_total);
    if (take) out[at] = static_cast<int32_t>(i);
    equal_seen += equal_total;
    written += take_total;
  }
}

// Flat 1/4 pixel (y * W3 + x) of memory slot j of batch element n.
struct PixelMap {
  const int32_t* selected;  // [N, num_memory]: tokens (window mode, first k used) or pixels (bilinear)
  int num_memory, window, level0_w, hr_w, mode;

  __device__ __forceinline__ int operator()(int n, int j) const {
    const int32_t* sel = selected + static_cast<long long>(n) * num_memory;
    if (mode != faseg::kTopKWindow) return sel[j];
    const int area = window * window;
    const int token = sel[j / area], within = j % area;
    const int r = token / level0_w, c = token % level0_w;
    return (r * window + within / window) * hr_w + c * window + within % window;
  }
};

__global__ void __launch_bounds__(kThreads)
    expand_kernel(PixelMap map, int32_t* __restrict__ pixels, long long total) {
  const long long grid_stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += grid_stride) {
    pixels[idx] = map(static_cast<int>(idx / map.num_memory), static_cast<int>(idx % map.num_memory));
  }
}

// mem[n, j, c] = feat[n, c, pixel_j]; key_in[n, j, c] = feat[n, c, pixel_j] + pos[n, c, pixel_j].
// A 32 x 32 (slot x channel) tile is read along slots and written along channels.
__global__ void __launch_bounds__(kThreads)
    gather_kernel(PixelMap map, const float* __restrict__ feat, const float* __restrict__ pos, float* __restrict__ mem,
                  float* __restrict__ key_in, int channels, int hw) {
  __shared__ float tile_f[32][33];
  __shared__ float tile_p[32][33];
  const int j0 = blockIdx.x * 32, c0 = blockIdx.y * 32, n = blockIdx.z;
  const int nk = map.num_memory;
  {
    const int j = j0 + threadIdx.x;
    const int pixel = j < nk ? map(n, j) : 0;
    for (int cc = threadIdx.y; cc < 32; cc += blockDim.y) {
      const int c = c0 + cc;
      float f = 0.0f, p = 0.0f;
      if (j < nk && c < channels) {
        const size_t at = (static_cast<size_t>(n) * channels + c) * hw + pixel;
        f = feat[at];
        p = pos[at];
      }
      tile_f[cc][threadIdx.x] = f;
      tile_p[cc][threadIdx.x] = p;
    }
  }
  __syncthreads();
  const int c = c0 + threadIdx.x;
  for (int jj = threadIdx.y; jj < 32; jj += blockDim.y) {
    const int j = j0 + jj;
    if (j < nk && c < channels) {
      const size_t at = (static_cast<size_t>(n) * nk + j) * channels + c;
      const float f = tile_f[threadIdx.x][jj];
      mem[at] = f;
      key_in[at] = f + tile_p[threadIdx.x][jj];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels: projections and attention
// ---------------------------------------------------------------------------------------------

constexpr int kTileM = 64, kTileN = 64, kTileK = 16;

// out[i, j] = sum_k a[i, k] * b[j, k] + bias[j] (bias may be null); a [rows, inner], b [cols, inner],
// out [rows, cols], all contiguous. 64 x 64 tiles, 256 threads, 4 x 4 outputs per thread, fp32.
__global__ void __launch_bounds__(256)
    gemm_nt_kernel(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ bias,
                   float* __restrict__ out, int rows, int cols, int inner) {
  __shared__ float as[kTileK][kTileM + 4];
  __shared__ float bs[kTileK][kTileN + 4];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int row0 = blockIdx.y * kTileM, col0 = blockIdx.x * kTileN;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < inner; k0 += kTileK) {
    for (int r = 0; r < 4; ++r) {
      const int e = threadIdx.x + 256 * r;
      const int m = e >> 4, kk = e & 15;
      const int gk = k0 + kk;
      const int gi = row0 + m, gj = col0 + m;
      as[kk][m] = (gi < rows && gk < inner) ? a[static_cast<size_t>(gi) * inner + gk] : 0.0f;
      bs[kk][m] = (gj < cols && gk < inner) ? b[static_cast<size_t>(gj) * inner + gk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + ty + 16 * i;
    if (r >= rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = col0 + tx + 16 * j;
      if (c < cols) out[static_cast<size_t>(r) * cols + c] = acc[i][j] + (bias ? bias[c] : 0.0f);
    }
  }
}

// ctx[n, q, h*Dh:(h+1)*Dh] = softmax_j(q_h . k_jh * scale) v_jh over the num_memory selected keys.
// One warp per (n, h, q); lane l owns channels l, l + 32, ... of the head; online (rescaled) softmax
// in fp32, four keys per step for instruction-level parallelism.
template <int kPerLane>
__global__ void __launch_bounds__(kAttnThreads)
    attention_kernel(const float* __restrict__ q_proj, const float* __restrict__ k_proj,
                     const float* __restrict__ v_proj, float* __restrict__ ctx, int batch, int num_queries,
                     int num_memory, int channels, int num_heads, int head_dim, float scale) {
  const long long warp_id = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp_id >= static_cast<long long>(batch) * num_heads * num_queries) return;  // uniform per warp
  const int q = static_cast<int>(warp_id % num_queries);
  const long long t = warp_id / num_queries;
  const int h = static_cast<int>(t % num_heads);
  const long long n = t / num_heads;

  const float* q_row = q_proj + (n * num_queries + q) * channels + h * head_dim;
  const float* k_base = k_proj + n * num_memory * channels + h * head_dim;
  const float* v_base = v_proj + n * num_memory * channels + h * head_dim;
  float qv[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    qv[i] = e < head_dim ? q_row[e] : 0.0f;
    acc[i] = 0.0f;
  }
  float running_max = -INFINITY, running_sum = 0.0f;
  for (int j0 = 0; j0 < num_memory; j0 += 4) {
    float s[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      float part = 0.0f;
      const int j = j0 + u;
      if (j < num_memory) {
        const float* k_row = k_base + static_cast<size_t>(j) * channels;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int e = lane + 32 * i;
          if (e < head_dim) part += qv[i] * k_row[e];
        }
      }
      s[u] = part;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
#pragma unroll
      for (int u = 0; u < 4; ++u) s[u] += __shfl_xor_sync(kFullMask, s[u], offset);
    }
    float chunk_max = running_max;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if (j0 + u < num_memory) {
        s[u] *= scale;
        chunk_max = fmaxf(chunk_max, s[u]);
      }
    }
    const float correction = expf(running_max - chunk_max);
    running_sum *= correction;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] *= correction;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int j = j0 + u;
      if (j >= num_memory) continue;
      const float p = expf(s[u] - chunk_max);
      running_sum += p;
      const float* v_row = v_base + static_cast<size_t>(j) * channels;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int e = lane + 32 * i;
        if (e < head_dim) acc[i] += p * v_row[e];
      }
    }
    running_max = chunk_max;
  }
  const float inv = 1.0f / running_sum;
  float* out = ctx + (n * num_queries + q) * channels + h * head_dim;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < head_dim) out[e] = acc[i] * inv;
  }
}

// ---------------------------------------------------------------------------------------------
// Launch helpers
// ---------------------------------------------------------------------------------------------

unsigned grid_for(long long total, int threads) {
  const long long blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(blocks < (1LL << 20) ? blocks : (1LL << 20));
}

cudaError_t gemm_nt(cudaStream_t stream, const float* a, const float* b, const float* bias, float* out, int rows,
                    int cols, int inner) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const dim3 grid((cols + kTileN - 1) / kTileN, (rows + kTileM - 1) / kTileM);
  if (grid.y > 65535) return cudaErrorInvalidValue;
  gemm_nt_kernel<<<grid, 256, 0, stream>>>(a, b, bias, out, rows, cols, inner);
  return cudaGetLastError();
}

#define FASEG_TRY(expr)                        \
  do {                                         \
    const cudaError_t faseg_err_ = (expr);     \
    if (faseg_err_ != cudaSuccess) return faseg_err_; \
  } while (0)

// Steps 1-3. Leaves the selection in the workspace and returns the pixel map over it.
cudaError_t run_selection(cudaStream_t stream, const FasegTopKCrossAttnShape& s, const faseg::TopKCrossAttnPlan& plan,
                          const Layout& l, const float* coarse_attn, unsigned char* ws, PixelMap* map) {
  const int n = static_cast<int>(s.batch), s0 = static_cast<int>(s.num_tokens);
  auto* score = reinterpret_cast<double*>(ws + l.score);
  auto* selected = reinterpret_cast<int32_t*>(ws + l.selected);
  const int nk = static_cast<int>(plan.num_memory);
  *map = PixelMap{selected, nk, static_cast<int>(plan.window), static_cast<int>(plan.level0_w),
                  static_cast<int>(s.hr_w), static_cast<int>(s.mode)};
  if (n == 0) return cudaSuccess;
  score_kernel<<<dim3((s0 + kThreads - 1) / kThreads, n), kThreads, 0, stream>>>(
      coarse_attn, score, static_cast<int>(s.num_queries), s0);
  FASEG_TRY(cudaGetLastError());
  if (s.mode == faseg::kTopKWindow) {
    select_kernel<<<n, kSelectThreads, 0, stream>>>(score, s0, static_cast<int>(plan.k), selected, nk);
  } else {
    auto* up = reinterpret_cast<double*>(ws + l.up);
    const long long hw = static_cast<long long>(s.hr_h) * s.hr_w;
    upsample_kernel<<<grid_for(n * hw, kThreads), kThreads, 0, stream>>>(
        score, up, n * hw, static_cast<int>(plan.level0_h), static_cast<int>(plan.level0_w),
        static_cast<int>(s.hr_h), static_cast<int>(s.hr_w));
    FASEG_TRY(cudaGetLastError());
    select_kernel<<<n, kSelectThreads, 0, stream>>>(up, hw, nk, selected, nk);
  }
  return cudaGetLastError();
}

template <int kPerLane>
void launch_attention(cudaStream_t stream, const float* q, const float* k, const float* v, float* ctx,
                      const FasegTopKCrossAttnShape& s, const faseg::TopKCrossAttnPlan& plan, float scale) {
  const long long warps = s.batch * s.num_heads * s.num_queries;
  const long long blocks = (warps * 32 + kAttnThreads - 1) / kAttnThreads;
  attention_kernel<kPerLane><<<static_cast<unsigned>(blocks), kAttnThreads, 0, stream>>>(
      q, k, v, ctx, static_cast<int>(s.batch), static_cast<int>(s.num_queries), static_cast<int>(plan.num_memory),
      static_cast<int>(s.channels), static_cast<int>(s.num_heads), static_cast<int>(plan.head_dim), scale);
}

}  // namespace

extern "C" {

FASEG_CUDA_API int faseg_topk_cross_attn_check(const FasegTopKCrossAttnShape* shape, char* message,
                                               size_t message_size) {
  faseg::TopKCrossAttnPlan plan;
  const std::string error = shape ? check(*shape, &plan) : std::string("shape is NULL");
  if (message != nullptr && message_size > 0) std::snprintf(message, message_size, "%s", error.c_str());
  return error.empty() ? 0 : 1;
}

FASEG_CUDA_API int64_t faseg_topk_cross_attn_num_memory(const FasegTopKCrossAttnShape* shape) {
  faseg::TopKCrossAttnPlan plan;
  if (shape == nullptr || !check(*shape, &plan).empty()) return 0;
  return plan.num_memory;
}

FASEG_CUDA_API size_t faseg_topk_cross_attn_workspace_size(const FasegTopKCrossAttnShape* shape, int upper_bound) {
  if (shape == nullptr) return 0;
  long long num_memory = 0;
  if (upper_bound) {
    const long long divisor = shape->divisor >= 1 ? shape->divisor : 1;
    num_memory = static_cast<long long>(shape->hr_h > 0 ? shape->hr_h : 0) * (shape->hr_w > 0 ? shape->hr_w : 0) /
                 divisor;
  } else {
    faseg::TopKCrossAttnPlan plan;
    if (!check(*shape, &plan).empty()) return 0;
    num_memory = plan.num_memory;
  }
  FasegTopKCrossAttnShape s = *shape;
  if (upper_bound && s.mode != faseg::kTopKWindow) s.mode = faseg::kTopKBilinear;  // unknown mode: larger layout
  return layout(s, num_memory).total;
}

FASEG_CUDA_API cudaError_t faseg_topk_cross_attn_select(cudaStream_t stream, const FasegTopKCrossAttnShape* shape,
                                                        const float* coarse_attn, int32_t* pixels, void* workspace,
                                                        size_t workspace_size) {
  faseg::TopKCrossAttnPlan plan;
  if (shape == nullptr || !check(*shape, &plan).empty()) return cudaErrorInvalidValue;
  const Layout l = layout(*shape, plan.num_memory);
  if (workspace_size < l.mem || (l.mem > 0 && workspace == nullptr)) return cudaErrorInvalidValue;
  auto* ws = static_cast<unsigned char*>(workspace);
  PixelMap map{};
  FASEG_TRY(run_selection(stream, *shape, plan, l, coarse_attn, ws, &map));
  const long long total = shape->batch * plan.num_memory;
  if (total == 0) return cudaSuccess;
  expand_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(map, pixels, total);
  return cudaGetLastError();
}

FASEG_CUDA_API cudaError_t faseg_topk_cross_attn_forward(cudaStream_t stream, const FasegTopKCrossAttnShape* shape,
                                                         const float* query, const float* feat, const float* pos,
                                                         const float* coarse_attn, const float* in_proj_weight,
                                                         const float* in_proj_bias, const float* out_proj_weight,
                                                         const float* out_proj_bias, float* output, void* workspace,
                                                         size_t workspace_size) {
  faseg::TopKCrossAttnPlan plan;
  if (shape == nullptr || !check(*shape, &plan).empty()) return cudaErrorInvalidValue;
  const FasegTopKCrossAttnShape& s = *shape;
  const Layout l = layout(s, plan.num_memory);
  if (workspace_size < l.total || workspace == nullptr) return cudaErrorInvalidValue;
  if (s.batch == 0 || s.num_queries == 0) return cudaSuccess;
  auto* ws = static_cast<unsigned char*>(workspace);
  const int n = static_cast<int>(s.batch), c = static_cast<int>(s.channels), q = static_cast<int>(s.num_queries);
  const int nk = static_cast<int>(plan.num_memory);
  const int hw = static_cast<int>(s.hr_h * s.hr_w);

  PixelMap map{};
  FASEG_TRY(run_selection(stream, s, plan, l, coarse_attn, ws, &map));

  auto* mem = reinterpret_cast<float*>(ws + l.mem);
  auto* key_in = reinterpret_cast<float*>(ws + l.key_in);
  auto* k_proj = reinterpret_cast<float*>(ws + l.k_proj);
  auto* v_proj = key_in;  // key_in is dead once the K projection is done (same stream, in order)
  auto* q_proj = reinterpret_cast<float*>(ws + l.q_proj);
  auto* ctx = reinterpret_cast<float*>(ws + l.ctx);

  gather_kernel<<<dim3((nk + 31) / 32, (c + 31) / 32, n), dim3(32, 8), 0, stream>>>(map, feat, pos, mem, key_in, c,
                                                                                    hw);
  FASEG_TRY(cudaGetLastError());

  const size_t cc = static_cast<size_t>(c) * c;
  const float* b_q = in_proj_bias;
  const float* b_k = in_proj_bias ? in_proj_bias + c : nullptr;
  const float* b_v = in_proj_bias ? in_proj_bias + 2 * c : nullptr;
  FASEG_TRY(gemm_nt(stream, query, in_proj_weight, b_q, q_proj, n * q, c, c));
  FASEG_TRY(gemm_nt(stream, key_in, in_proj_weight + cc, b_k, k_proj, n * nk, c, c));
  FASEG_TRY(gemm_nt(stream, mem, in_proj_weight + 2 * cc, b_v, v_proj, n * nk, c, c));

  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(plan.head_dim)));
  if (plan.head_dim <= 32) {
    launch_attention<1>(stream, q_proj, k_proj, v_proj, ctx, s, plan, scale);
  } else if (plan.head_dim <= 64) {
    launch_attention<2>(stream, q_proj, k_proj, v_proj, ctx, s, plan, scale);
  } else if (plan.head_dim <= 128) {
    launch_attention<4>(stream, q_proj, k_proj, v_proj, ctx, s, plan, scale);
  } else {
    launch_attention<8>(stream, q_proj, k_proj, v_proj, ctx, s, plan, scale);
  }
  FASEG_TRY(cudaGetLastError());
  return gemm_nt(stream, ctx, out_proj_weight, out_proj_bias, output, n * q, c, c);
}

}  // extern "C"
