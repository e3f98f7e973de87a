// The CPU kernels of the dynamic local filter (impl="cpp" in dfn/filtering.py).
//
// Built on first use by torch.utils.cpp_extension.load and registered as torch.ops.dfn.*.
// dfn.filtering._ShiftLocalFilter pads the input, promotes dtypes, allocates the outputs (the
// gradients in memory kept from call to call: reusable_empty_like) and computes the bias
// gradient; these kernels do the two inner computations, each in one pass over the filters:
//
//   forward:  out[b,c,y,x] = sum_t u[b,c,y+i,x+j] * f[b,(c,)t,y,x],   tap t = (i, j)
//   backward: grad_f[b,(c,)t,y,x] = sum_c g[b,c,y,x] * u[b,c,y+i,x+j]  (no sum if per channel)
//             grad_x[b,c,y+i-ph,x+j-pw] += g[b,c,y,x] * f[b,(c,)t,y,x]   (inside the image)
//
// u is the zero-padded input [B, C, H+kh-1, W+kw-1]; f is [B, T, H, W] (shared by the channels)
// or [B, C, T, H, W]; all tensors contiguous, float32 or float64.
//
// Order of work: for a band of image rows, tap row by tap row (i), the kw filter planes of that
// tap row are read as kw sequential streams, while the band's input and output rows stay in
// L1/L2. The forward sums the kw taps of a row in registers; channels that share the filters are
// processed together, so that each filter vector loaded serves all of them. The backward
// computes grad_x as a gather (no read-modify-write of shifted rows) and writes the filter
// gradient with streaming stores. Threads split the samples (and the channels of per-channel
// filters); each owns whole (sample, filter group) pairs: no atomics, deterministic results.
//
// Headers are kept lean (no torch/extension.h, whose headers alone take ~30 s to compile here):
// the build takes about 10 s.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <sys/mman.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <type_traits>
#include <vector>

namespace {

struct Geometry {
  int64_t batch, channels, height, width, kh, kw;
  bool per_channel;
  int64_t taps() const { return kh * kw; }
  int64_t padded_height() const { return height + kh - 1; }
  int64_t padded_width() const { return width + kw - 1; }
  int64_t groups() const { return per_channel ? channels : 1; }  // filter sets per sample
  int64_t group_channels() const { return per_channel ? 1 : channels; }
  bool empty() const { return batch * channels * height * width == 0; }
};

Geometry check(const at::Tensor& padded, const at::Tensor& filters, int64_t kh, int64_t kw) {
  TORCH_CHECK(padded.device().is_cpu() && filters.device().is_cpu(),
              "dfn::local_filter: CPU tensors only");
  TORCH_CHECK(padded.dim() == 4, "dfn::local_filter: padded input must be [B, C, Hp, Wp]");
  TORCH_CHECK(padded.is_contiguous() && filters.is_contiguous(),
              "dfn::local_filter: inputs must be contiguous");
  TORCH_CHECK(padded.scalar_type() == filters.scalar_type(), "dfn::local_filter: dtypes differ");
  TORCH_CHECK(padded.scalar_type() == at::kFloat || padded.scalar_type() == at::kDouble,
              "dfn::local_filter: float32 or float64 only");
  Geometry g{padded.size(0), padded.size(1), padded.size(2) - kh + 1, padded.size(3) - kw + 1,
             kh, kw, filters.dim() == 5};
  TORCH_CHECK(kh >= 1 && kw >= 1 && g.height >= 0 && g.width >= 0, "dfn::local_filter: bad sizes");
  if (g.per_channel) {
    TORCH_CHECK(
        filters.sizes() == at::IntArrayRef({g.batch, g.channels, g.taps(), g.height, g.width}),
        "dfn::local_filter: filters do not match the padded input");
  } else {
    TORCH_CHECK(filters.dim() == 4 &&
                    filters.sizes() == at::IntArrayRef({g.batch, g.taps(), g.height, g.width}),
                "dfn::local_filter: filters do not match the padded input");
  }
  return g;
}

// Vectors of 32 bytes (8 floats, 4 doubles) in GCC's vector extension: AVX2 or AVX-512 code
// with -march=native, narrower code elsewhere; loads and stores through memcpy are unaligned.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <>
struct VecOf<int32_t> {
  typedef int32_t type __attribute__((vector_size(32)));
};
template <>
struct VecOf<int64_t> {
  typedef int64_t type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
// integer lanes as wide as T's: comparisons give masks for T's vectors
template <typename T>
using IVec = typename VecOf<std::conditional_t<sizeof(T) == 4, int32_t, int64_t>>::type;
template <typename T>
constexpr int kLanes = sizeof(Vec<T>) / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void store(T* p, const Vec<T>& v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// A store that bypasses the caches (p 32-byte aligned): for the filter gradient, written once and
// much larger than the caches. It needs no read of the line it writes, and does not hold up the
// stores behind it while that read goes to memory.
template <typename T>
inline void stream(T* p, const Vec<T>& v) {
#if defined(__AVX__)
  if constexpr (sizeof(T) == 4) {
    _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<const __m256&>(v));
  } else {
    _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<const __m256d&>(v));
  }
#else
  store(p, v);
#endif
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Channels that share the filters are processed CB at a time (CB <= 4, known at compile time), so
// that each filter vector loaded serves all of them; this calls fn(c0, integral_constant<CB>).
constexpr int64_t kMaxBlock = 4;
template <typename Fn>
inline void for_channel_blocks(int64_t channels, Fn&& fn) {
  for (int64_t c0 = 0; c0 < channels; c0 += kMaxBlock) {
    switch (std::min(kMaxBlock, channels - c0)) {
      case 1:
        fn(c0, std::integral_constant<int, 1>{});
        break;
      case 2:
        fn(c0, std::integral_constant<int, 2>{});
        break;
      case 3:
        fn(c0, std::integral_constant<int, 3>{});
        break;
      default:
        fn(c0, std::integral_constant<int, 4>{});
    }
  }
}

// Vectors per chunk of a row: as many as leave registers for CB channels' sums.
template <int CB>
constexpr int kChunk = CB == 1 ? 4 : 2;

// ---------------------------------------------------------------------------------------------
// Forward. For one tap row i and one output row y of CB channels:
//   out_c[x] (+)= sum_j u_c[x + j] * f_j[x]
// with the sum over j in registers. u: padded row y + i of the first channel, channels u_cs
// apart; f: tap (i, 0) at row y, taps HW apart; out: row y of the first channel, out_cs apart.
template <typename T, int CB, int NV>
inline void forward_chunk(const T* __restrict__ u, int64_t u_cs, const T* __restrict__ f,
                          T* __restrict__ out, int64_t out_cs, int64_t kw, int64_t HW, bool first) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[CB][NV];
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) acc[c][n] = first ? Vec<T>{} : load(out + c * out_cs + n * L);
  for (int64_t j = 0; j < kw; ++j) {
    Vec<T> fv[NV];
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) fv[n] = load(f + j * HW + n * L);
#pragma GCC unroll 16
    for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) acc[c][n] += load(u + c * u_cs + j + n * L) * fv[n];
  }
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) store(out + c * out_cs + n * L, acc[c][n]);
}

template <typename T, int CB>
inline void forward_row(const T* u, int64_t u_cs, const T* f, T* out, int64_t out_cs, int64_t W,
                        int64_t kw, int64_t HW, bool first) {
  constexpr int L = kLanes<T>, NV = kChunk<CB>;
  int64_t x = 0;
  for (; x + NV * L <= W; x += NV * L)
    forward_chunk<T, CB, NV>(u + x, u_cs, f + x, out + x, out_cs, kw, HW, first);
  for (; x + L <= W; x += L)
    forward_chunk<T, CB, 1>(u + x, u_cs, f + x, out + x, out_cs, kw, HW, first);
  for (; x < W; ++x) {
    for (int c = 0; c < CB; ++c) {
      T acc = first ? T(0) : out[c * out_cs + x];
      for (int64_t j = 0; j < kw; ++j) acc += u[c * u_cs + x + j] * f[j * HW + x];
      out[c * out_cs + x] = acc;
    }
  }
}

template <typename T>
void forward_kernel(const Geometry& g, const T* u, const T* f, T* out) {
  const int64_t H = g.height, W = g.width, Hp = g.padded_height(), Wp = g.padded_width();
  const int64_t HW = H * W, taps = g.taps(), CG = g.group_channels(), G = g.groups();
  const int64_t kh = g.kh, kw = g.kw, C = g.channels;
  // blocks of rows of about 64 KiB per tap plane: whole planes for the paper's images
  const int64_t rows = std::clamp<int64_t>((1 << 16) / (W * sizeof(T)), 1, H);
  const int64_t blocks = (H + rows - 1) / rows;
  // work item: a block of rows of one sample and filter group. For each tap row i, the kw filter
  // planes of that row are read as kw sequential streams; the block's output rows (in L1/L2)
  // accumulate kw taps at a time.
  at::parallel_for(0, g.batch * G * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item % blocks, group = (item / blocks) % G, b = item / (blocks * G);
      const int64_t y0 = block * rows, y1 = std::min(H, y0 + rows);
      const T* fg = f + (b * G + group) * taps * HW;
      for (int64_t i = 0; i < kh; ++i) {
        for (int64_t y = y0; y < y1; ++y) {
          for_channel_blocks(CG, [&](int64_t c0, auto cb) {
            const int64_t plane = b * C + group * CG + c0;
            forward_row<T, decltype(cb)::value>(u + (plane * Hp + y + i) * Wp, Hp * Wp,
                                                fg + i * kw * HW + y * W, out + (plane * H + y) * W,
                                                HW, W, kw, HW, i == 0);
          });
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward, filter gradient. For one tap row i and one row y of CB channels:
//   gf_j[x] (+)= sum_c g_c[x] * u_c[x + j]
// g: row y of the first channel, channels HW apart; u: padded row y + i, channels u_cs apart;
// gf: tap (i, 0) at row y, taps HW apart. add: add to gf (channels after the first block).
template <typename T, int CB, int NV>
inline void filter_grad_chunk(const T* __restrict__ g, const T* __restrict__ u, int64_t u_cs,
                              T* __restrict__ gf, int64_t kw, int64_t HW, bool add, bool nt) {
  constexpr int L = kLanes<T>;
  Vec<T> gv[CB][NV];
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) gv[c][n] = load(g + c * HW + n * L);
  for (int64_t j = 0; j < kw; ++j) {
    Vec<T> acc[NV];
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) acc[n] = add ? load(gf + j * HW + n * L) : Vec<T>{};
#pragma GCC unroll 16
    for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) acc[n] += gv[c][n] * load(u + c * u_cs + j + n * L);
    if (nt) {
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) stream(gf + j * HW + n * L, acc[n]);
    } else {
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) store(gf + j * HW + n * L, acc[n]);
    }
  }
}

template <typename T, int CB>
inline void filter_grad_row(const T* g, const T* u, int64_t u_cs, T* gf, int64_t W, int64_t kw,
                            int64_t HW, bool add, bool nt) {
  constexpr int L = kLanes<T>, NV = kChunk<CB>;
  int64_t x = 0;
  for (; x + NV * L <= W; x += NV * L)
    filter_grad_chunk<T, CB, NV>(g + x, u + x, u_cs, gf + x, kw, HW, add, nt);
  for (; x + 2 * L <= W; x += 2 * L)  // 64 bytes: whole cache lines for streaming stores
    filter_grad_chunk<T, CB, 2>(g + x, u + x, u_cs, gf + x, kw, HW, add, nt);
  for (; x + L <= W; x += L)
    filter_grad_chunk<T, CB, 1>(g + x, u + x, u_cs, gf + x, kw, HW, add, false);
  for (; x < W; ++x) {
    for (int64_t j = 0; j < kw; ++j) {
      T acc = add ? gf[j * HW + x] : T(0);
      for (int c = 0; c < CB; ++c) acc += g[c * HW + x] * u[c * u_cs + x + j];
      gf[j * HW + x] = acc;
    }
  }
}

// Backward, input gradient. The scatter grad_u[y + i - ph, x + j - pw] += g[y, x] * f_j[y, x] of
// one tap row i and one row y, as a gather into the grad_u row:
//   gu_c[xo] += sum_j g_c[xo + pw - j] * f_j[xo + pw - j],   terms outside [0, W) left out
// gs: the grad rows staged with pw zeros either side (column c at index c + pw), channels gs_cs
// apart; f: tap (i, 0) at row y, taps HW apart; gu: grad_u row, channels HW apart.
//
// Vectors of columns whose terms are all inside the row read the filters in place (below, the
// pointers are at the chunk's column for j = 0, loads at -j). At the row's ends, masked: the
// lanes of f_j outside the row are read from the neighbouring rows and replaced by zeros.
template <typename T, int CB, int NV, bool kMasked>
inline void input_grad_chunk(const T* __restrict__ gs, int64_t gs_cs, const T* __restrict__ f,
                             T* __restrict__ gu, int64_t kw, int64_t HW, int64_t column,
                             int64_t W) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[CB][NV];
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) acc[c][n] = load(gu + c * HW + n * L);
  IVec<T> columns{};  // kMasked: the column of f_j in each lane, for j = 0
  if constexpr (kMasked) {
    for (int l = 0; l < L; ++l) columns[l] = column + l;
  }
  for (int64_t j = 0; j < kw; ++j) {
    Vec<T> fv[NV];
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) fv[n] = load(f + j * (HW - 1) + n * L);
    if constexpr (kMasked) {
      static_assert(NV == 1);
      using I = std::remove_reference_t<decltype(columns[0])>;
      const IVec<T> at = columns - static_cast<I>(j);
      fv[0] = (at >= 0 && at < static_cast<I>(W)) ? fv[0] : Vec<T>{};
    }
#pragma GCC unroll 16
    for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) acc[c][n] += load(gs + c * gs_cs - j + n * L) * fv[n];
  }
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) store(gu + c * HW + n * L, acc[c][n]);
}

// One column, reading only the filters inside the row
template <typename T, int CB>
inline void input_grad_column(const T* gs, int64_t gs_cs, const T* f, T* gu, int64_t kw,
                              int64_t HW, int64_t x, int64_t W) {
  const int64_t pw = kw / 2;
  for (int c = 0; c < CB; ++c) {
    T acc = gu[c * HW + x];
    for (int64_t j = std::max<int64_t>(0, x + pw - W + 1); j < kw && x + pw - j >= 0; ++j)
      acc += gs[c * gs_cs + x + 2 * pw - j] * f[j * HW + x + pw - j];
    gu[c * HW + x] = acc;
  }
}

// in_bounds: the filter rows may be read up to pw columns beyond either end (they are not the
// first or last row of the filter tensor)
template <typename T, int CB>
inline void input_grad_row(const T* gs, int64_t gs_cs, const T* f, T* gu, int64_t W, int64_t kw,
                           int64_t HW, bool in_bounds) {
  constexpr int L = kLanes<T>, NV = kChunk<CB>;
  const int64_t pw = kw / 2;
  // [begin, end): the columns whose terms are all inside the row, in whole vectors
  int64_t begin = (pw + L - 1) / L * L, end = begin + (W - pw - begin) / L * L;
  if (begin + L + pw > W) begin = end = 0;
  int64_t x = begin;
  for (; x + NV * L <= end; x += NV * L)
    input_grad_chunk<T, CB, NV, false>(gs + x + 2 * pw, gs_cs, f + x + pw, gu + x, kw, HW, 0, W);
  for (; x < end; x += L)
    input_grad_chunk<T, CB, 1, false>(gs + x + 2 * pw, gs_cs, f + x + pw, gu + x, kw, HW, 0, W);
  auto edge = [&](int64_t x) {
    if (in_bounds) {
      input_grad_chunk<T, CB, 1, true>(gs + x + 2 * pw, gs_cs, f + x + pw, gu + x, kw, HW,
                                       x + pw, W);
    } else {
      for (int64_t k = x; k < x + L; ++k) input_grad_column<T, CB>(gs, gs_cs, f, gu, kw, HW, k, W);
    }
  };
  for (x = 0; x < begin; x += L) edge(x);
  for (x = end; x + L <= W; x += L) edge(x);
  for (; x < W; ++x) input_grad_column<T, CB>(gs, gs_cs, f, gu, kw, HW, x, W);
}

template <typename T>
void backward_kernel(const Geometry& g, const T* grad, const T* u, const T* f, T* grad_f,
                     T* grad_u) {
  const int64_t H = g.height, W = g.width, Hp = g.padded_height(), Wp = g.padded_width();
  const int64_t HW = H * W, taps = g.taps(), CG = g.group_channels(), G = g.groups();
  const int64_t kh = g.kh, kw = g.kw, C = g.channels, ph = kh / 2, pw = kw / 2;
  const int64_t Ws = W + 2 * pw;  // a staged row: pw zeros, W values, pw zeros
  const T* f_end = f + g.batch * G * taps * HW;
  // streaming stores write whole cache lines (a partly written line would be flushed half
  // empty), so every row of the filter gradient must start on one; and they only write values
  // once final: all of a filter's channels in one block
  const bool stream_rows = reinterpret_cast<uintptr_t>(grad_f) % 64 == 0 &&
                           (W * sizeof(T)) % 64 == 0 && CG <= kMaxBlock;
  // bands of rows whose grad, input, staged grad and grad_u rows (about 16 * CG * W bytes per
  // row in float32) stay in L2 while the band goes through the taps
  const int64_t rows = std::clamp<int64_t>((1 << 15) / (CG * W * sizeof(T)), 1, H);
  // work item: (sample, filter group); it owns its grad_u planes and its filter gradient. Band by
  // band, tap row by tap row: the kw filter planes of a tap row are read as kw sequential streams
  at::parallel_for(0, g.batch * G, 1, [&](int64_t begin, int64_t end) {
    // the band's grad rows, staged with zero margins
    std::vector<T> staged_grad(grad_u ? CG * rows * Ws : 0, T(0));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t group = item % G, b = item / G;
      const int64_t plane = b * C + group * CG;  // the group's first channel
      const T* fg = f + (b * G + group) * taps * HW;
      T* gfg = grad_f ? grad_f + (b * G + group) * taps * HW : nullptr;
      for (int64_t y0 = 0; y0 < H; y0 += rows) {
        const int64_t y1 = std::min(H, y0 + rows);
        if (grad_u) {
          for (int64_t c = 0; c < CG; ++c)
            for (int64_t y = y0; y < y1; ++y)
              std::copy_n(grad + ((plane + c) * H + y) * W, W,
                          staged_grad.data() + (c * rows + y - y0) * Ws + pw);
        }
        for (int64_t i = 0; i < kh; ++i) {
          for (int64_t y = y0; y < y1; ++y) {
            const int64_t r = y + i - ph;  // the grad_u row that tap row i of row y scatters into
            const T* fy = fg + i * kw * HW + y * W;
            // the input gradient first: it reads the filters, the filter gradient then writes at
            // the same offsets modulo 4 KiB (stores before such loads stall on false forwarding)
            if (grad_u && r >= 0 && r < H) {
              const bool in_bounds = fy - pw >= f && fy + (kw - 1) * HW + W + pw <= f_end;
              for_channel_blocks(CG, [&](int64_t c0, auto cb) {
                input_grad_row<T, decltype(cb)::value>(
                    staged_grad.data() + (c0 * rows + y - y0) * Ws, rows * Ws, fy,
                    grad_u + ((plane + c0) * H + r) * W, W, kw, HW, in_bounds);
              });
            }
            if (gfg) {
              for_channel_blocks(CG, [&](int64_t c0, auto cb) {
                filter_grad_row<T, decltype(cb)::value>(
                    grad + ((plane + c0) * H + y) * W, u + ((plane + c0) * Hp + y + i) * Wp,
                    Hp * Wp, gfg + i * kw * HW + y * W, W, kw, HW, c0 > 0, stream_rows);
              });
            }
          }
        }
      }
    }
    stream_fence();
  });
}

// Ask Linux for transparent huge pages for a buffer not yet written (2 MiB-aligned): fewer page
// faults on its first write. Only a hint: it changes nothing where THP is off.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(data, bytes, MADV_HUGEPAGE);
#endif
}

// Memory for the gradients, kept for the next call when their tensors are freed. A fresh block
// (glibc maps anything over 32 MiB anew, and returns smaller blocks at the top of its heap) costs
// a page fault per page on its first write, in which Linux zeroes the page: at B16 C3 128x128
// 9x9 the op took 52 ms a call with a fresh filter gradient and 34 ms with kept memory, and the
// slowest calls 2.3x the median instead of 1.2x (docs/PERFORMANCE.md). Blocks of the same size
// are reused; at most kKeptBytes wait for reuse.
class BlockCache {
 public:
  static constexpr size_t kAlign = size_t(1) << 21;  // huge pages
  static constexpr size_t kKeptBytes = size_t(256) << 20;

  void* take(size_t bytes) {
    void* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto kept = free_.find(bytes);
      if (kept != free_.end()) {
        block = kept->second;
        free_.erase(kept);
        kept_bytes_ -= bytes;
      }
    }
    if (block == nullptr) {
      if (posix_memalign(&block, kAlign, std::max<size_t>(bytes, 1)) != 0) throw std::bad_alloc();
      advise_huge_pages(block, bytes);
    }
    // the profiler's memory events count the block while its tensor lives, as torch's allocator
    // reports its own (scripts/benchmark_filtering.py measures peak memory from them)
    c10::reportMemoryUsageToProfiler(block, bytes, 0, 0, c10::Device(c10::DeviceType::CPU));
    return block;
  }

  void give_back(void* block, size_t bytes) {
    c10::reportMemoryUsageToProfiler(block, -int64_t(bytes), 0, 0,
                                     c10::Device(c10::DeviceType::CPU));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (kept_bytes_ + bytes <= kKeptBytes) {
        free_.emplace(bytes, block);
        kept_bytes_ += bytes;
        return;
      }
    }
    std::free(block);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t kept_bytes_ = 0;
};

// never destroyed: tensors freed while the process exits still give their blocks back to it
BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();
  return *cache;
}

// An uninitialised tensor like ``like`` (contiguous) in memory from the block cache.
at::Tensor reusable_empty_like(const at::Tensor& like) {
  const size_t bytes = like.numel() * like.element_size();
  void* block = block_cache().take(bytes);
  return at::from_blob(
      block, like.sizes(), [bytes](void* data) { block_cache().give_back(data, bytes); },
      like.options().memory_format(std::nullopt));
}

// out = local filter of the padded input; out: [B, C, H, W], contiguous, same dtype
void local_filter_forward(const at::Tensor& padded, const at::Tensor& filters,
                          const at::Tensor& out, int64_t kh, int64_t kw) {
  const Geometry g = check(padded, filters, kh, kw);
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == padded.scalar_type() &&
                  out.sizes() == at::IntArrayRef({g.batch, g.channels, g.height, g.width}),
              "dfn::local_filter_forward: bad output");
  if (g.empty()) return;
  if (padded.scalar_type() == at::kFloat) {
    forward_kernel<float>(g, padded.const_data_ptr<float>(), filters.const_data_ptr<float>(),
                          out.mutable_data_ptr<float>());
  } else {
    forward_kernel<double>(g, padded.const_data_ptr<double>(), filters.const_data_ptr<double>(),
                           out.mutable_data_ptr<double>());
  }
}

// grad_filters (like filters) is overwritten, grad_input ([B, C, H, W], zeroed by the caller: the
// gradient of the padded input's interior) is added to; an empty tensor skips that gradient
void local_filter_backward(const at::Tensor& grad, const at::Tensor& padded,
                           const at::Tensor& filters, const at::Tensor& grad_filters,
                           const at::Tensor& grad_input, int64_t kh, int64_t kw) {
  const Geometry g = check(padded, filters, kh, kw);
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == padded.scalar_type() &&
                  grad.sizes() == at::IntArrayRef({g.batch, g.channels, g.height, g.width}),
              "dfn::local_filter_backward: bad grad");
  const bool need_f = grad_filters.numel() > 0, need_u = grad_input.numel() > 0;
  TORCH_CHECK(!need_f || (grad_filters.is_contiguous() && grad_filters.sizes() == filters.sizes() &&
                          grad_filters.scalar_type() == filters.scalar_type()),
              "dfn::local_filter_backward: bad grad_filters");
  TORCH_CHECK(!need_u || (grad_input.is_contiguous() && grad_input.sizes() == grad.sizes() &&
                          grad_input.scalar_type() == padded.scalar_type()),
              "dfn::local_filter_backward: bad grad_input");
  if (!need_f && !need_u) return;
  if (g.empty()) {  // no pixels, or no channels: a zero filter gradient
    if (need_f) std::memset(grad_filters.data_ptr(), 0, grad_filters.nbytes());
    return;
  }
  if (padded.scalar_type() == at::kFloat) {
    backward_kernel<float>(g, grad.const_data_ptr<float>(), padded.const_data_ptr<float>(),
                           filters.const_data_ptr<float>(),
                           need_f ? grad_filters.mutable_data_ptr<float>() : nullptr,
                           need_u ? grad_input.mutable_data_ptr<float>() : nullptr);
  } else {
    backward_kernel<double>(g, grad.const_data_ptr<double>(), padded.const_data_ptr<double>(),
                            filters.const_data_ptr<double>(),
                            need_f ? grad_filters.mutable_data_ptr<double>() : nullptr,
                            need_u ? grad_input.mutable_data_ptr<double>() : nullptr);
  }
}

}  // namespace

TORCH_LIBRARY(dfn, m) {
  m.def(
      "local_filter_forward(Tensor padded, Tensor filters, Tensor(a!) out, int kh, int kw) -> ()");
  m.def(
      "local_filter_backward(Tensor grad, Tensor padded, Tensor filters, Tensor(a!) grad_filters, "
      "Tensor(b!) grad_input, int kh, int kw) -> ()");
  m.def("reusable_empty_like(Tensor like) -> Tensor");
}

TORCH_LIBRARY_IMPL(dfn, CPU, m) {
  m.impl("local_filter_forward", &local_filter_forward);
  m.impl("local_filter_backward", &local_filter_backward);
  m.impl("reusable_empty_like", &reusable_empty_like);
}
