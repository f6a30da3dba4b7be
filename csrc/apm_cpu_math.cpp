#include "apm_cpu_math.h"

namespace ap3d {
namespace math {

AP3D_MULTIVERSION
void softmax_row_f32(float* row, int64_t n, float scale, float* max_out, float* sum_out) {
  float m = row[0];
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = row[i] > m ? row[i] : m;
  // scale > 0, so max(scale * s) = scale * max(s) and every exponent is <= 0.
  const float sm = scale * m;
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_f32(scale * row[i] - sm);
    row[i] = e;
    s += e;
  }
  *max_out = m;
  *sum_out = s;
}

AP3D_MULTIVERSION
void exp_shift_row_f32(float* row, int64_t n, float scale, float shift) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) row[i] = exp_f32(scale * row[i] - shift);
}

AP3D_MULTIVERSION
void dsoftmax_row_f32(float* dp, const float* p, int64_t n, float delta, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dp[i] = scale * p[i] * (dp[i] - delta);
}

}  // namespace math
}  // namespace ap3d
