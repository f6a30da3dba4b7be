// Row loops over one (pair, row block) of the similarity matrix: the only element-wise work
// that scales with HW^2, so it is vectorised and dispatched at run time.
//
// The extension is compiled for the baseline ISA (it must load on any x86-64 or ARM CPU), so
// at::vec would fall back to scalar code. Instead each float loop is built three times with
// GCC's target_clones (x86-64-v4 = AVX-512, v3 = AVX2+FMA, baseline) and the loader picks the
// best clone for the CPU (ifunc). The exp is a Cephes-style polynomial written in plain
// arithmetic so that the compiler vectorises it in every clone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__)
#define AP3D_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define AP3D_HAVE_MULTIVERSION 1
#else
#define AP3D_MULTIVERSION
#define AP3D_HAVE_MULTIVERSION 0
#endif

namespace ap3d {
namespace math {

// exp(x) for x <= 88 with about 2 ulp error. Arguments below -87 are clamped (result ~1.6e-38
// instead of a denormal or 0): in a softmax whose largest term is exp(0) = 1 that is invisible.
// Branch-free and without library calls, so every clone vectorises it.
static inline float exp_f32(float x) {
  const float xc = std::max(x, -87.0f);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  // Cody-Waite range reduction: ln2 split in two so that r is exact.
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}

// Defined in apm_cpu_math.cpp with AP3D_MULTIVERSION; declared plain here so that callers bind
// to the ifunc symbol whose resolver picks the clone.
// Forward: row <- exp(scale * (row - max(row))); returns max(row) and sum of the exps.
void softmax_row_f32(float* row, int64_t n, float scale, float* max_out, float* sum_out);
// Backward: row <- exp(scale * row - shift) (the probabilities, recomputed from the saved lse).
void exp_shift_row_f32(float* row, int64_t n, float scale, float shift);
// Backward: dp <- scale * p * (dp - delta) (softmax backward, times the similarity scale).
void dsoftmax_row_f32(float* dp, const float* p, int64_t n, float delta, float scale);

inline void softmax_row(double* row, int64_t n, double scale, double* max_out, double* sum_out) {
  double m = row[0];
  for (int64_t i = 1; i < n; ++i) m = row[i] > m ? row[i] : m;
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    row[i] = std::exp(scale * (row[i] - m));
    s += row[i];
  }
  *max_out = m;
  *sum_out = s;
}
inline void softmax_row(float* row, int64_t n, float scale, float* max_out, float* sum_out) {
  softmax_row_f32(row, n, scale, max_out, sum_out);
}

inline void exp_shift_row(double* row, int64_t n, double scale, double shift) {
  for (int64_t i = 0; i < n; ++i) row[i] = std::exp(scale * row[i] - shift);
}
inline void exp_shift_row(float* row, int64_t n, float scale, float shift) { exp_shift_row_f32(row, n, scale, shift); }

inline void dsoftmax_row(double* dp, const double* p, int64_t n, double delta, double scale) {
  for (int64_t i = 0; i < n; ++i) dp[i] = scale * p[i] * (dp[i] - delta);
}
inline void dsoftmax_row(float* dp, const float* p, int64_t n, float delta, float scale) {
  dsoftmax_row_f32(dp, p, n, delta, scale);
}

}  // namespace math
}  // namespace ap3d
