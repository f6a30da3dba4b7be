// Memory layouts the CPU kernels read and write in place: [B, C, F, H, W] feature maps stored
// NCDHW (contiguous) or channels_last_3d, and the GEMM operands of 16-bit inputs (float32 copies
// of single frames, or bf16 blocks where the CPU has native bf16). Nothing here copies a whole tensor.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "apm_cpu_math.h"  // AP3D_HAVE_MULTIVERSION: x86-64 GCC, where __builtin_cpu_supports exists

namespace ap3d {

// Element (b, c, f, i) of a [B, C, F, H, W] tensor whose H and W merge into one index i is at
// data + b * sB + c * sC + f * sF + i * sHW.
struct Strided {
  int64_t sB, sC, sF, sHW;
  // NCDHW: a frame is C rows of HW contiguous values; channels_last_3d: HW rows of C values.
  bool hw_inner() const { return sHW == 1; }
  int64_t frame(int64_t b, int64_t f) const { return b * sB + f * sF; }
};

// bfloat16 inputs on a CPU with native bf16 dot products (AVX512-BF16 or AMX): the three
// HW x HW x C products (P V forward; dY V^T and dY^T P backward) run as bf16 GEMMs with float32
// accumulation, as FlashAttention casts P to the input dtype for P V. Elsewhere bf16 GEMMs are
// emulated and slower than the float32 path, which then stays.
inline bool native_bf16_gemm() {
#if AP3D_HAVE_MULTIVERSION
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  }();
  return supported;
#else
  return false;
#endif
}

template <typename scalar_t>
inline bool use_bf16_gemm() {
  return std::is_same<scalar_t, at::BFloat16>::value && native_bf16_gemm();
}

template <typename src_t, typename dst_t>
inline void convert(const src_t* src, dst_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i]);
}

inline bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// The format of the outputs and of grad_x: x's own (channels_last_3d or contiguous).
inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  return is_channels_last(t) ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
}

// t itself in either native layout; other strides (slices, permutations) are made contiguous.
inline at::Tensor as_native(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast3d) ? t : t.contiguous();
}

inline Strided strided(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(4)}; }

// Calls f(c, r) for c < C, r < bm, in the memory order of a layout (the inner loop unit-stride).
template <typename F>
inline void for_each_cr(bool hw_inner, int64_t C, int64_t bm, const F& f) {
  if (hw_inner) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < bm; ++r) f(c, r);
  } else {
    for (int64_t r = 0; r < bm; ++r)
      for (int64_t c = 0; c < C; ++c) f(c, r);
  }
}

template <typename T>
at::Tensor view2d(const T* p, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {rs, cs},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// A frame of values as a [C, HW] matrix in the accumulation type, for the BLAS. For float32 /
// float64 inputs that is a strided view of x itself. For 16-bit inputs each thread converts the
// frames it needs into its own float32 buffers, in x's layout, and keeps them for the next work
// items (one slot per frame index modulo `slots`; a work item needs at most `slots` distinct
// frames), so the conversion costs O(C * HW) per frame visit against O(C * HW * rows) of GEMM.
template <typename scalar_t, typename acc_t>
class FrameSource {
 public:
  static constexpr bool kConvert = !std::is_same<scalar_t, acc_t>::value;

  FrameSource(const scalar_t* x, Strided s, int64_t C, int64_t HW, int64_t slots, int nthreads)
      : x_(x), s_(s), C_(C), HW_(HW), slots_(slots) {
    if constexpr (kConvert) {
      buffer_ = at::empty({nthreads * slots * C * HW}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
      keys_.assign(static_cast<size_t>(nthreads * slots), -1);
    }
  }

  // Frame f of clip b as a [C, HW] view of x itself, in x's dtype (for 16-bit GEMMs).
  at::Tensor native(int64_t b, int64_t f) const {
    return view2d(x_ + s_.frame(b, f), C_, HW_, s_.hw_inner() ? s_.sC : 1, s_.hw_inner() ? 1 : s_.sHW);
  }

  at::Tensor get(int tid, int64_t b, int64_t f) {
    const int64_t rs = s_.hw_inner() ? (kConvert ? HW_ : s_.sC) : 1;
    const int64_t cs = s_.hw_inner() ? 1 : (kConvert ? C_ : s_.sHW);
    if constexpr (!kConvert) {
      return view2d(x_ + s_.frame(b, f), C_, HW_, rs, cs);
    } else {
      return converted(tid, b, f, rs, cs);
    }
  }

 private:
  at::Tensor converted(int tid, int64_t b, int64_t f, int64_t rs, int64_t cs) {
    const int64_t slot = tid * slots_ + f % slots_, key = b * (1LL << 32) + f;
    acc_t* dst = buffer_.template mutable_data_ptr<acc_t>() + slot * C_ * HW_;
    if (keys_[slot] != key) {
      const scalar_t* src = x_ + s_.frame(b, f);
      const int64_t outer = s_.hw_inner() ? C_ : HW_, inner = s_.hw_inner() ? HW_ : C_;
      const int64_t stride = s_.hw_inner() ? s_.sC : s_.sHW;
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) dst[o * inner + i] = static_cast<acc_t>(src[o * stride + i]);
      keys_[slot] = key;
    }
    return view2d(static_cast<const acc_t*>(dst), C_, HW_, rs, cs);
  }

  const scalar_t* x_;
  Strided s_;
  int64_t C_, HW_, slots_;
  at::Tensor buffer_;
  std::vector<int64_t> keys_;
};

}  // namespace ap3d
