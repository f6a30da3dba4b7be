// Fused APM forward and backward on CPU.
//
// Work is split like PyTorch's CPU flash attention (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp):
// parallel over independent units, per-thread scratch allocated once, float32 accumulation for
// half types, and a backward that recomputes the probabilities from the saved log-sum-exp.
// The key dim (Ck = C/16) is tiny and every similarity row fits in cache, so a row block holds
// all HW keys: the HW x HW matrix exists only as one [BM, HW] block per thread. The heavy
// products (P @ V, dY @ V^T, dY^T @ P: HW^2 * C each) are GEMMs on strided slices through
// at::mm_out / addmm_, which reach the BLAS directly without copies; inside at::parallel_for the
// BLAS runs single-threaded, so threads never oversubscribe.
#include "apm_cpu.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "apm_cpu_math.h"

namespace ap3d {
namespace {

using at::Tensor;

// F.normalize's eps: the reference divides by max(||p||, eps).
constexpr double kNormEps = 1e-12;

struct Geometry {
  int64_t B, C, T, H, W, HW, Ck, N, half, nb;
  std::vector<int64_t> offsets;  // neighbour offsets in output order: -half .. -1, 1 .. half
  int64_t slot(int64_t j) const { return j < half ? j : j + 1; }  // output frame of neighbour j
};

Geometry make_geometry(const Tensor& x, const Tensor& g, int64_t time_dim) {
  Geometry geo;
  geo.B = x.size(0);
  geo.C = x.size(1);
  geo.T = x.size(2);
  geo.H = x.size(3);
  geo.W = x.size(4);
  geo.HW = geo.H * geo.W;
  geo.Ck = g.size(0);
  geo.N = time_dim;
  geo.half = time_dim / 2;
  geo.nb = time_dim - 1;
  for (int64_t o = -geo.half; o <= geo.half; ++o)
    if (o != 0) geo.offsets.push_back(o);
  return geo;
}

// Rows per block. 64 rows keep the [BM, HW] block in L2 up to HW of a few thousand while the
// P @ V GEMM ([C, HW] x [HW, BM]) stays wide enough for the BLAS micro-kernels.
int64_t row_block(int64_t HW) { return std::min<int64_t>(HW, 64); }

// Runs body(i, i + 1) for every item in [0, n) on all threads. Items are handed out one at a time
// from a shared counter instead of in fixed equal ranges: when another process takes a core, the
// other threads take over its share instead of waiting for it. Always inside a parallel region
// (for n >= 2), so the BLAS calls in the body are nested and stay single-threaded.
template <typename F>
void parallel_items(int64_t n, const F& body) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      body(i, i + 1);
  });
}

template <typename T>
Tensor view2d(const T* p, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {rs, cs},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

void check_weight(const char* name, const Tensor& w, const Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK(w.sizes() == shape, "apm: ", name, " must have shape ", shape, ", got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "apm: ", name, " must have x's dtype ", x.scalar_type(),
              ", got ", w.scalar_type());
  TORCH_CHECK(w.device() == x.device(), "apm: ", name, " must be on x's device ", x.device(), ", got ",
              w.device());
}

// Checks for direct calls of the op (the Python entry point validates with clearer messages first).
void check_args(const Tensor& x, const Tensor& g, const std::optional<Tensor>& theta,
                const std::optional<Tensor>& phi, const std::optional<Tensor>& att, double scale,
                int64_t time_dim, bool contrastive) {
  TORCH_CHECK(x.dim() == 5, "apm: x must have shape [B, C, T, H, W], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "apm (cpu backend): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "apm: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, "apm: x must have no empty dimension, got ", x.sizes());
  TORCH_CHECK(g.dim() == 2 && g.size(0) >= 1, "apm: g_weight must have shape [Ck, C], got ", g.sizes());
  check_weight("g_weight", g, x, {g.size(0), x.size(1)});
  TORCH_CHECK(time_dim >= 3 && time_dim % 2 == 1, "apm: time_dim must be odd and >= 3, got ", time_dim);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "apm: scale must be finite and > 0, got ", scale);
  if (contrastive) {
    TORCH_CHECK(theta.has_value() && phi.has_value() && att.has_value(),
                "apm: contrastive=True needs theta_weight, phi_weight and att_weight");
    check_weight("theta_weight", *theta, x, g.sizes());
    check_weight("phi_weight", *phi, x, g.sizes());
    check_weight("att_weight", *att, x, {g.size(0)});
  }
}

// at::mm_out on a view of existing memory (the view itself is a temporary).
void mm_into(Tensor out, const Tensor& a, const Tensor& b) { at::mm_out(out, a, b); }

// [B, C, T*HW] features times w^T ([C, Ck]) -> [B, T*HW, Ck]. Computed as w @ x[b] ([Ck, T*HW])
// and transposed once: the BLAS runs ~10x slower on the transposed-x, Ck-wide output form.
// bmm rather than per-clip mm: ATen's bmm runs small problems on the calling thread, where a
// top-level BLAS call would wake its thread team even for a few hundred FLOPs.
Tensor project(const Tensor& Xv, const Tensor& w) {
  return at::bmm(w.expand({Xv.size(0), w.size(0), w.size(1)}), Xv).transpose(1, 2).contiguous();
}

// Same arithmetic as F.normalize(p, dim=-1): p / max(||p||, eps). Returns (q, ||p||).
std::pair<Tensor, Tensor> normalize_rows(const Tensor& p) {
  Tensor norm = at::linalg_vector_norm(p, 2, {-1}, /*keepdim=*/true);
  return {p / norm.clamp_min(kNormEps), norm};
}

// --------------------------------------------------------------------------------------------
// Forward: one work item = (clip b, centre t, row block). It writes the centre copy and the
// N-1 reconstructions of those rows, so the interleaved output is produced in a single pass.
// --------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void forward_kernel(const Geometry& geo, const scalar_t* xs, const acc_t* X, const acc_t* Q, const acc_t* TH,
                    const acc_t* Phi, const acc_t* w, scalar_t* out, acc_t* lse, acc_t* gate, acc_t* phy,
                    acc_t scale, bool contrastive) {
  const int64_t B = geo.B, C = geo.C, T = geo.T, HW = geo.HW, Ck = geo.Ck, N = geo.N, nb = geo.nb;
  const int64_t TN = T * N;
  const int64_t BM = row_block(HW);
  const int64_t nblk = (HW + BM - 1) / BM;
  const int64_t per_thread = BM * HW + C * BM + Ck * BM + 2 * BM;
  const int nthreads = at::get_num_threads();
  // Scratch through the tensor allocator (not std::vector) so memory profilers account for it.
  const Tensor scratch_t = at::empty({nthreads * per_thread}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* const scratch = scratch_t.mutable_data_ptr<acc_t>();
  const acc_t log_hw = std::log(static_cast<acc_t>(HW));
  const Tensor PhiM = contrastive ? view2d(Phi, Ck, C, C, 1) : Tensor();

  parallel_items(B * T * nblk, [&](int64_t begin, int64_t end) {
    acc_t* S = scratch + at::get_thread_num() * per_thread;  // [bm, HW]: scores, then exp
    acc_t* YT = S + BM * HW;                                       // [C, bm]: un-normalised P @ V, transposed
    acc_t* PHT = YT + C * BM;                                      // [Ck, bm]: phi(YT)
    acc_t* f = PHT + Ck * BM;                                      // per-row output factor a / l
    acc_t* inv_l = f + BM;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (T * nblk), t = (item / nblk) % T, blk = item % nblk;
      const int64_t i0 = blk * BM, bm = std::min(BM, HW - i0);
      // The centre frame is the untouched input.
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = xs + ((b * C + c) * T + t) * HW + i0;
        std::copy(src, src + bm, out + ((b * C + c) * TN + t * N + geo.half) * HW + i0);
      }
      const Tensor Qrows = view2d(Q + ((b * T + t) * HW + i0) * Ck, bm, Ck, Ck, 1);
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t tn = t + geo.offsets[j];
        scalar_t* o = out + (b * C * TN + t * N + geo.slot(j)) * HW + i0;  // row c at o + c * TN * HW
        const int64_t pr = ((b * T + t) * nb + j) * HW + i0;                // row index into lse/gate/phy
        if (tn < 0 || tn >= T) {
          // Zero-padded neighbour: zero keys give a uniform softmax over zero values, i.e. zeros
          // (the saved statistics are what that uniform row would have).
          for (int64_t c = 0; c < C; ++c) std::fill(o + c * TN * HW, o + c * TN * HW + bm, scalar_t(0));
          std::fill(lse + pr, lse + pr + bm, log_hw);
          if (contrastive) {
            std::fill(gate + pr, gate + pr + bm, acc_t(0.5));
            std::fill(phy + pr * Ck, phy + (pr + bm) * Ck, acc_t(0));
          }
          continue;
        }
        mm_into(view2d(S, bm, HW, HW, 1), Qrows, view2d(Q + (b * T + tn) * HW * Ck, Ck, HW, 1, Ck));
        for (int64_t r = 0; r < bm; ++r) {
          acc_t m, l;
          math::softmax_row(S + r * HW, HW, scale, &m, &l);
          lse[pr + r] = scale * m + std::log(l);
          inv_l[r] = acc_t(1) / l;
        }
        // YT = V^T E^T with V^T = x[b, :, tn] as [C, HW]: the reconstruction in output layout.
        const Tensor YTm = view2d(YT, C, bm, bm, 1);
        mm_into(YTm, view2d(X + (b * C * T + tn) * HW, C, HW, T * HW, 1), view2d(S, HW, bm, 1, HW));
        if (contrastive) {
          mm_into(view2d(PHT, Ck, bm, bm, 1), PhiM, YTm);
          const acc_t* th = TH + ((b * T + t) * HW + i0) * Ck;
          for (int64_t r = 0; r < bm; ++r) {
            acc_t u = 0;
            for (int64_t k = 0; k < Ck; ++k) {
              const acc_t ph = PHT[k * bm + r] * inv_l[r];  // phi is linear: phi(E V) / l = phi(y)
              phy[(pr + r) * Ck + k] = ph;
              u += w[k] * th[r * Ck + k] * ph;
            }
            const acc_t a = acc_t(1) / (acc_t(1) + std::exp(-u));
            gate[pr + r] = a;
            f[r] = a * inv_l[r];
          }
        } else {
          std::copy(inv_l, inv_l + bm, f);
        }
        for (int64_t c = 0; c < C; ++c) {
          const acc_t* yc = YT + c * bm;
          scalar_t* oc = o + c * TN * HW;
          for (int64_t r = 0; r < bm; ++r) oc[r] = static_cast<scalar_t>(yc[r] * f[r]);
        }
      }
    }
  });
}

// --------------------------------------------------------------------------------------------
// Backward: one work item = (clip b, neighbour frame tn). It visits every pair whose keys and
// values are frame tn, so dV (into dX[b, :, tn]) and dK (into DKT[b, tn]) have a single writer;
// dQ and d(theta input) are written per pair (disjoint rows) and summed afterwards.
// The un-gated reconstruction y is never stored: with z = a * y,
//   sum_c dz*y * a = sum_c dz*z = zd,   delta = sum_c dy*y = zd + dph . phi(y),
// and only dPhi needs y itself, as z / a folded into one per-row coefficient.
// --------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void backward_kernel(const Geometry& geo, const acc_t* X, const acc_t* Q, const acc_t* TH, const acc_t* Phi,
                     const acc_t* w, const scalar_t* out, const scalar_t* dout, const acc_t* lse,
                     const acc_t* gate, const acc_t* phy, acc_t* dX, acc_t* DQ, acc_t* DKT, acc_t* DTH,
                     acc_t* dPhiT_acc, acc_t* dw_acc, acc_t scale, bool contrastive, bool detach) {
  const int64_t B = geo.B, C = geo.C, T = geo.T, HW = geo.HW, Ck = geo.Ck, N = geo.N, nb = geo.nb;
  const int64_t TN = T * N;
  const int64_t BM = row_block(HW);
  const int64_t nblk = (HW + BM - 1) / BM;
  const int64_t per_thread = 2 * BM * HW + 2 * C * BM + 3 * BM * Ck + 2 * BM;
  const int nthreads = at::get_num_threads();
  const Tensor scratch_t = at::empty({nthreads * per_thread}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* const scratch = scratch_t.mutable_data_ptr<acc_t>();
  const Tensor PhiT = contrastive ? view2d(Phi, C, Ck, 1, C) : Tensor();
  constexpr acc_t tiny = std::numeric_limits<acc_t>::min();

  parallel_items(B * T, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    acc_t* P = scratch + tid * per_thread;  // [bm, HW] probabilities
    acc_t* dP = P + BM * HW;                       // [bm, HW] dP, then dS
    acc_t* dYT = dP + BM * HW;                     // [C, bm] gradient of y, transposed
    acc_t* ZT = dYT + C * BM;                      // [C, bm] z, transposed (for dPhi)
    acc_t* E = ZT + C * BM;                        // [bm, Ck] dPhi coefficients
    acc_t* DPH = E + BM * Ck;                      // [bm, Ck] d phi(y)
    acc_t* DQT = DPH + BM * Ck;                    // [Ck, bm] dq of the row block, transposed
    acc_t* zd = DQT + BM * Ck;                     // [bm] sum_c dz * z
    acc_t* delta = zd + BM;                        // [bm] sum_c dy * y
    acc_t* dPhiT = dPhiT_acc + tid * C * Ck;       // [C, Ck] this thread's dPhi^T
    acc_t* dw = dw_acc + tid * Ck;
    const Tensor dPhiTm = contrastive ? view2d(dPhiT, C, Ck, Ck, 1) : Tensor();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / T, tn = item % T;
      const Tensor Xn = view2d(X + (b * C * T + tn) * HW, C, HW, T * HW, 1);
      Tensor dXn = view2d(dX + (b * C * T + tn) * HW, C, HW, T * HW, 1);
      const acc_t* Kp = Q + (b * T + tn) * HW * Ck;
      const Tensor KT = view2d(Kp, Ck, HW, 1, Ck);
      // dK is accumulated transposed ([Ck, HW]): GEMMs with a tiny output width (Ck) run far
      // below peak in the BLAS, the transposed shapes do not.
      Tensor DKTm = view2d(DKT + (b * T + tn) * Ck * HW, Ck, HW, HW, 1);
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t t = tn - geo.offsets[j];  // centre whose neighbour j is tn
        if (t < 0 || t >= T) continue;
        const int64_t zoff = (b * C * TN + t * N + geo.slot(j)) * HW;  // row c at + c * TN * HW
        for (int64_t blk = 0; blk < nblk; ++blk) {
          const int64_t i0 = blk * BM, bm = std::min(BM, HW - i0);
          const int64_t pr = ((b * T + t) * nb + j) * HW + i0;
          const acc_t* Qp = Q + ((b * T + t) * HW + i0) * Ck;
          mm_into(view2d(P, bm, HW, HW, 1), view2d(Qp, bm, Ck, Ck, 1), KT);
          for (int64_t r = 0; r < bm; ++r) math::exp_shift_row(P + r * HW, HW, scale, lse[pr + r]);

          const acc_t* a = contrastive ? gate + pr : nullptr;
          std::fill(zd, zd + bm, acc_t(0));
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* dzc = dout + zoff + c * TN * HW + i0;
            const scalar_t* zc = out + zoff + c * TN * HW + i0;
            acc_t* dyc = dYT + c * bm;
            if (contrastive) {
              acc_t* zt = ZT + c * bm;
              for (int64_t r = 0; r < bm; ++r) {
                const acc_t dz = static_cast<acc_t>(dzc[r]), z = static_cast<acc_t>(zc[r]);
                zd[r] += dz * z;
                dyc[r] = a[r] * dz;
                zt[r] = z;
              }
            } else {
              for (int64_t r = 0; r < bm; ++r) {
                const acc_t dz = static_cast<acc_t>(dzc[r]);
                zd[r] += dz * static_cast<acc_t>(zc[r]);
                dyc[r] = dz;
              }
            }
          }
          std::copy(zd, zd + bm, delta);
          if (contrastive) {
            const acc_t* th = TH + ((b * T + t) * HW + i0) * Ck;
            const acc_t* ph = phy + pr * Ck;
            acc_t* dth = DTH + pr * Ck;
            for (int64_t r = 0; r < bm; ++r) {
              const acc_t du = zd[r] * (acc_t(1) - a[r]);  // dL/du = (dL/da) a (1 - a), dL/da = zd / a
              // y = z / a; where a underflowed to 0, z is 0 too and every term is O(a).
              const acc_t coef = a[r] > tiny ? du / a[r] : acc_t(0);
              for (int64_t k = 0; k < Ck; ++k) {
                const acc_t thk = th[r * Ck + k], phk = ph[r * Ck + k];
                dw[k] += du * thk * phk;
                dth[r * Ck + k] = du * w[k] * phk;
                E[r * Ck + k] = coef * w[k] * thk;
                DPH[r * Ck + k] = du * w[k] * thk;
              }
            }
            dPhiTm.addmm_(view2d(ZT, C, bm, bm, 1), view2d(E, bm, Ck, Ck, 1));
            if (!detach) {
              // The gate's input y is not detached: dy += dphi(y) @ Phi, and delta gains dph . phi(y).
              view2d(dYT, C, bm, bm, 1).addmm_(PhiT, view2d(DPH, Ck, bm, 1, Ck));
              for (int64_t r = 0; r < bm; ++r) {
                acc_t s = 0;
                for (int64_t k = 0; k < Ck; ++k) s += DPH[r * Ck + k] * ph[r * Ck + k];
                delta[r] += s;
              }
            }
          }
          // dP = dY V^T, then dS = scale * P * (dP - delta) in place.
          mm_into(view2d(dP, bm, HW, HW, 1), view2d(dYT, bm, C, 1, bm), Xn);
          for (int64_t r = 0; r < bm; ++r) math::dsoftmax_row(dP + r * HW, P + r * HW, HW, delta[r], scale);
          // dV^T += dY^T P, straight into dx of the neighbour frame.
          dXn.addmm_(view2d(dYT, C, bm, bm, 1), view2d(P, bm, HW, HW, 1));
          mm_into(view2d(DQT, Ck, bm, bm, 1), KT, view2d(dP, HW, bm, 1, HW));
          for (int64_t r = 0; r < bm; ++r)
            for (int64_t k = 0; k < Ck; ++k) DQ[(pr + r) * Ck + k] = DQT[k * bm + r];
          DKTm.addmm_(view2d(Qp, Ck, bm, 1, Ck), view2d(dP, bm, HW, HW, 1));
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> apm_forward_cpu(const Tensor& x, const Tensor& g_weight,
                                                           const std::optional<Tensor>& theta_weight,
                                                           const std::optional<Tensor>& phi_weight,
                                                           const std::optional<Tensor>& att_weight, double scale,
                                                           int64_t time_dim, bool contrastive,
                                                           bool /*detach_gate_inputs: used by the backward only*/) {
  // The kernel's own ATen calls (bmm, mm_out) must run in the input's dtype with fp32
  // accumulation; an enclosing torch.autocast region would otherwise recast them mid-kernel.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_args(x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim, contrastive);
  const Geometry geo = make_geometry(x, g_weight, time_dim);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor xs = x.contiguous();
  const Tensor X = xs.to(acc_type);
  const Tensor Xv = X.view({geo.B, geo.C, geo.T * geo.HW});
  const Tensor Q = normalize_rows(project(Xv, g_weight.to(acc_type))).first;
  Tensor TH, Phi, w;
  if (contrastive) {
    TH = project(Xv, theta_weight->to(acc_type));
    Phi = phi_weight->to(acc_type).contiguous();
    w = att_weight->to(acc_type).contiguous();
  }
  Tensor out = at::empty({geo.B, geo.C, geo.N * geo.T, geo.H, geo.W}, xs.options());
  const auto acc_opts = X.options();
  Tensor lse = at::empty({geo.B, geo.T, geo.nb, geo.HW}, acc_opts);
  Tensor gate = contrastive ? at::empty({geo.B, geo.T, geo.nb, geo.HW}, acc_opts) : at::empty({0}, acc_opts);
  Tensor phy = contrastive ? at::empty({geo.B, geo.T, geo.nb, geo.HW, geo.Ck}, acc_opts) : at::empty({0}, acc_opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "apm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(geo, xs.const_data_ptr<scalar_t>(), X.const_data_ptr<acc_t>(),
                                    Q.const_data_ptr<acc_t>(), contrastive ? TH.const_data_ptr<acc_t>() : nullptr,
                                    contrastive ? Phi.const_data_ptr<acc_t>() : nullptr,
                                    contrastive ? w.const_data_ptr<acc_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
                                    lse.mutable_data_ptr<acc_t>(), contrastive ? gate.mutable_data_ptr<acc_t>() : nullptr,
                                    contrastive ? phy.mutable_data_ptr<acc_t>() : nullptr, static_cast<acc_t>(scale),
                                    contrastive);
  });
  return {out, lse, gate, phy};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> apm_backward_cpu(
    const Tensor& grad_out, const Tensor& x, const Tensor& g_weight, const std::optional<Tensor>& theta_weight,
    const std::optional<Tensor>& phi_weight, const std::optional<Tensor>& att_weight, const Tensor& out,
    const Tensor& lse, const Tensor& gate, const Tensor& phi_y, double scale, int64_t time_dim, bool contrastive,
    bool detach_gate_inputs) {
  // The kernel's own ATen calls (bmm, mm_out) must run in the input's dtype with fp32
  // accumulation; an enclosing torch.autocast region would otherwise recast them mid-kernel.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_args(x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim, contrastive);
  const Geometry geo = make_geometry(x, g_weight, time_dim);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(out.sizes() == at::IntArrayRef({geo.B, geo.C, geo.N * geo.T, geo.H, geo.W}) &&
                  grad_out.sizes() == out.sizes(),
              "apm backward: out and grad_out must have shape [B, C, N*T, H, W], got ", out.sizes(), " and ",
              grad_out.sizes());
  TORCH_CHECK(lse.scalar_type() == acc_type && lse.numel() == geo.B * geo.T * geo.nb * geo.HW,
              "apm backward: lse does not match the forward's saved statistics");
  if (contrastive) {
    TORCH_CHECK(gate.numel() == lse.numel() && phi_y.numel() == lse.numel() * geo.Ck &&
                    gate.scalar_type() == acc_type && phi_y.scalar_type() == acc_type,
                "apm backward: gate / phi_y do not match the forward's saved statistics");
  }
  const Tensor X = x.contiguous().to(acc_type);
  const Tensor Xv = X.view({geo.B, geo.C, geo.T * geo.HW});
  const Tensor G = g_weight.to(acc_type).contiguous();
  const Tensor Praw = project(Xv, G);
  const auto q_and_norm = normalize_rows(Praw);
  const Tensor& Q = q_and_norm.first;
  const Tensor& norm = q_and_norm.second;
  Tensor TH, Theta, Phi, w;
  if (contrastive) {
    Theta = theta_weight->to(acc_type).contiguous();
    TH = project(Xv, Theta);
    Phi = phi_weight->to(acc_type).contiguous();
    w = att_weight->to(acc_type).contiguous();
  }
  const Tensor outc = out.contiguous();
  const Tensor doutc = grad_out.to(out.scalar_type()).contiguous();
  const Tensor lsec = lse.contiguous();
  const Tensor gatec = gate.contiguous();
  const Tensor phyc = phi_y.contiguous();

  const auto acc_opts = X.options();
  Tensor dX = at::zeros({geo.B, geo.C, geo.T, geo.H, geo.W}, acc_opts);
  Tensor DQ = at::zeros({geo.B, geo.T, geo.nb, geo.HW, geo.Ck}, acc_opts);
  Tensor DKT = at::zeros({geo.B, geo.T, geo.Ck, geo.HW}, acc_opts);
  Tensor DTH = contrastive ? at::zeros({geo.B, geo.T, geo.nb, geo.HW, geo.Ck}, acc_opts) : Tensor();
  const int nthreads = at::get_num_threads();
  Tensor dPhiT_acc = at::zeros({nthreads, geo.C, geo.Ck}, acc_opts);
  Tensor dw_acc = at::zeros({nthreads, geo.Ck}, acc_opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "apm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t>(
        geo, X.const_data_ptr<acc_t>(), Q.const_data_ptr<acc_t>(), contrastive ? TH.const_data_ptr<acc_t>() : nullptr,
        contrastive ? Phi.const_data_ptr<acc_t>() : nullptr, contrastive ? w.const_data_ptr<acc_t>() : nullptr,
        outc.const_data_ptr<scalar_t>(), doutc.const_data_ptr<scalar_t>(), lsec.const_data_ptr<acc_t>(),
        contrastive ? gatec.const_data_ptr<acc_t>() : nullptr, contrastive ? phyc.const_data_ptr<acc_t>() : nullptr,
        dX.mutable_data_ptr<acc_t>(), DQ.mutable_data_ptr<acc_t>(), DKT.mutable_data_ptr<acc_t>(),
        contrastive ? DTH.mutable_data_ptr<acc_t>() : nullptr, dPhiT_acc.mutable_data_ptr<acc_t>(),
        dw_acc.mutable_data_ptr<acc_t>(), static_cast<acc_t>(scale), contrastive, detach_gate_inputs);
  });

  const Tensor dXv = dX.view({geo.B, geo.C, geo.T * geo.HW});
  // The centre frames of the output are x itself.
  dX.view({geo.B, geo.C, geo.T, geo.HW})
      .add_(doutc.view({geo.B, geo.C, geo.T, geo.N, geo.HW}).select(3, geo.half));

  // Through the normalisation q = p / max(||p||, eps) (a frame's q is both query and key) ...
  const Tensor dq = (DQ.sum(2) + DKT.transpose(2, 3)).view({geo.B, geo.T * geo.HW, geo.Ck});
  const Tensor denom = norm.clamp_min(kNormEps);
  const Tensor radial = (Q * dq).sum(-1, /*keepdim=*/true) * (norm >= kNormEps);
  const Tensor dp = (dq - Q * radial) / denom;
  // ... and the projection p = g(x). Batched over clips (see project()).
  const Tensor XvT = Xv.transpose(1, 2);
  const auto expand_t = [&](const Tensor& w) { return w.t().expand({geo.B, geo.C, geo.Ck}); };
  const Tensor dpT = dp.transpose(1, 2);
  Tensor dG = at::bmm(dpT, XvT).sum(0);
  dXv.baddbmm_(expand_t(G), dpT);
  Tensor dTheta, dPhi, dw;
  if (contrastive) {
    const Tensor dthT = DTH.sum(2).view({geo.B, geo.T * geo.HW, geo.Ck}).transpose(1, 2);
    dTheta = at::bmm(dthT, XvT).sum(0);
    if (!detach_gate_inputs) dXv.baddbmm_(expand_t(Theta), dthT);
    dPhi = dPhiT_acc.sum(0).t().contiguous();
    dw = dw_acc.sum(0);
  } else {
    dTheta = dPhi = dw = at::empty({0}, x.options());
  }
  const auto wdt = g_weight.scalar_type();
  return {dX.to(x.scalar_type()), dG.to(wdt), dTheta.to(wdt), dPhi.to(wdt), dw.to(wdt)};
}

std::string apm_cpu_isa() {
#if AP3D_HAVE_MULTIVERSION
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "portable (compiler auto-vectorisation for the build target)";
#endif
}

}  // namespace ap3d
