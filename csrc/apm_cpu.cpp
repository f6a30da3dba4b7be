// Fused APM core on CPU: forward and FlashAttention-2 style backward (see apm_cpu.h for the contract).
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

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "apm_cpu_layout.h"
#include "apm_cpu_math.h"

namespace ap3d {
namespace {

using at::Tensor;

struct Geometry {
  int64_t B, C, T, H, W, HW, Ck, N, half, nb;
  std::vector<int64_t> offsets;  // neighbour offsets in output order: -half .. -1, 1 .. half
  int64_t slot(int64_t j) const { return j < half ? j : j + 1; }  // output frame of neighbour j
};

Geometry make_geometry(const Tensor& x, const Tensor& q, int64_t time_dim) {
  Geometry geo;
  geo.B = x.size(0);
  geo.C = x.size(1);
  geo.T = x.size(2);
  geo.H = x.size(3);
  geo.W = x.size(4);
  geo.HW = geo.H * geo.W;
  geo.Ck = q.size(3);
  geo.N = time_dim;
  geo.half = time_dim / 2;
  geo.nb = time_dim - 1;
  for (int64_t o = -geo.half; o <= geo.half; ++o)
    if (o != 0) geo.offsets.push_back(o);
  return geo;
}

at::ScalarType acc_type_for(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

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

// at::mm_out on a view of existing memory (the view itself is a temporary).
void mm_into(Tensor out, const Tensor& a, const Tensor& b) { at::mm_out(out, a, b); }

void check_stat(const char* name, const std::optional<Tensor>& t, const Tensor& q) {
  TORCH_CHECK(t.has_value(), "apm: contrastive=True needs ", name, " (shape ", q.sizes(), "), got None");
  TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() && t->device() == q.device(), "apm: ",
              name, " must have q's shape ", q.sizes(), " and dtype ", q.scalar_type(), ", got ", t->sizes(), " ",
              t->scalar_type(), " on ", t->device());
}

// The Python entry point validates the user's arguments with clearer messages; these checks
// guard direct calls of the operator.
void check_args(const Tensor& x, const Tensor& q, const std::optional<Tensor>& vphi,
                const std::optional<Tensor>& tw, double scale, int64_t time_dim, bool contrastive) {
  TORCH_CHECK(x.dim() == 5, "apm: x must have shape [B, C, T, H, W], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "apm (cpu backend): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "apm: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, "apm: x must have no empty dimension, got ", x.sizes());
  TORCH_CHECK(q.dim() == 4 && q.size(0) == x.size(0) && q.size(1) == x.size(2) && q.size(2) == x.size(3) * x.size(4) &&
                  q.size(3) >= 1,
              "apm: q must have shape [B, T, H*W, Ck] = [", x.size(0), ", ", x.size(2), ", ", x.size(3) * x.size(4),
              ", Ck >= 1], got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == acc_type_for(x.scalar_type()), "apm: q must have the accumulation dtype ",
              acc_type_for(x.scalar_type()), " for x of dtype ", x.scalar_type(), ", got ", q.scalar_type());
  TORCH_CHECK(q.device() == x.device(), "apm: q must be on x's device ", x.device(), ", got ", q.device());
  TORCH_CHECK(time_dim >= 3 && time_dim % 2 == 1, "apm: time_dim must be odd and >= 3, got ", time_dim);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "apm: scale must be finite and > 0, got ", scale);
  if (contrastive) {
    check_stat("vphi", vphi, q);
    check_stat("tw", tw, q);
  }
}

// --------------------------------------------------------------------------------------------
// Forward: one work item = (clip b, centre t, row block). It writes the centre copy and the
// N-1 reconstructions of those rows, so the interleaved output is produced in a single pass.
// x and out are read and written in place in their layout (NCDHW or channels_last_3d).
// --------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void forward_kernel(const Geometry& geo, const scalar_t* x, Strided xs, const acc_t* Q, const acc_t* VPHI,
                    const acc_t* TW, scalar_t* out, Strided os, acc_t* lse, acc_t* gate, acc_t* phi, acc_t scale,
                    bool contrastive) {
  const int64_t B = geo.B, C = geo.C, T = geo.T, HW = geo.HW, Ck = geo.Ck, N = geo.N, nb = geo.nb;
  const int64_t BM = row_block(HW);
  const int64_t nblk = (HW + BM - 1) / BM;
  const int64_t per_thread = BM * HW + C * BM + Ck * BM + 2 * BM;
  const int nthreads = at::get_num_threads();
  // Scratch through the tensor allocator (not std::vector) so memory profilers account for it.
  const Tensor scratch_t =
      at::empty({nthreads * per_thread}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* const scratch = scratch_t.mutable_data_ptr<acc_t>();
  const bool bf16 = use_bf16_gemm<scalar_t>();
  // bf16 GEMMs: per thread, E in bf16 ([bm, HW]) and P @ V in bf16 ([C, bm]); V is read from x.
  const int64_t per_thread16 = bf16 ? BM * HW + C * BM : 0;
  const Tensor scratch16_t = at::empty({nthreads * per_thread16}, at::TensorOptions().dtype(
                                                                     c10::CppTypeToScalarType<scalar_t>::value));
  scalar_t* const scratch16 = scratch16_t.mutable_data_ptr<scalar_t>();
  FrameSource<scalar_t, acc_t> values(x, xs, C, HW, bf16 ? 1 : N, bf16 ? 0 : nthreads);  // unused with bf16
  const acc_t log_hw = std::log(static_cast<acc_t>(HW));

  parallel_items(B * T * nblk, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    acc_t* S = scratch + tid * per_thread;  // [bm, HW]: scores, then exp
    acc_t* YT = S + BM * HW;                // [C, bm]: un-normalised P @ V, transposed
    acc_t* PHT = YT + C * BM;               // [Ck, bm]: un-normalised P @ vphi, transposed
    acc_t* f = PHT + Ck * BM;               // per-row output factor a / l
    acc_t* inv_l = f + BM;
    scalar_t* Eb = scratch16 + tid * per_thread16;  // bf16 path only
    scalar_t* YTb = Eb + BM * HW;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (T * nblk), t = (item / nblk) % T, blk = item % nblk;
      const int64_t i0 = blk * BM, bm = std::min(BM, HW - i0);
      // The centre frame is the untouched input.
      const scalar_t* src = x + xs.frame(b, t) + i0 * xs.sHW;
      scalar_t* centre = out + os.frame(b, t * N + geo.half) + i0 * os.sHW;
      for_each_cr(os.hw_inner(), C, bm,
                  [&](int64_t c, int64_t r) { centre[c * os.sC + r * os.sHW] = src[c * xs.sC + r * xs.sHW]; });
      const Tensor Qrows = view2d(Q + ((b * T + t) * HW + i0) * Ck, bm, Ck, Ck, 1);
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t tn = t + geo.offsets[j];
        scalar_t* o = out + os.frame(b, t * N + geo.slot(j)) + i0 * os.sHW;  // element (c, r) at c*sC + r*sHW
        const int64_t pr = ((b * T + t) * nb + j) * HW + i0;                 // row index into lse/gate/phi
        if (tn < 0 || tn >= T) {
          // Zero-padded neighbour: zero keys give a uniform softmax over zero values, i.e. zeros;
          // the saved statistics are the reference's for that row.
          for_each_cr(os.hw_inner(), C, bm, [&](int64_t c, int64_t r) { o[c * os.sC + r * os.sHW] = scalar_t(0); });
          std::fill(lse + pr, lse + pr + bm, log_hw);
          if (contrastive) {
            std::fill(gate + pr, gate + pr + bm, acc_t(0.5));
            std::fill(phi + pr * Ck, phi + (pr + bm) * Ck, acc_t(0));
          }
          continue;
        }
        const acc_t* kv = Q + (b * T + tn) * HW * Ck;
        mm_into(view2d(S, bm, HW, HW, 1), Qrows, view2d(kv, Ck, HW, 1, Ck));
        for (int64_t r = 0; r < bm; ++r) {
          acc_t m, l;
          math::softmax_row(S + r * HW, HW, scale, &m, &l);
          lse[pr + r] = scale * m + std::log(l);
          inv_l[r] = acc_t(1) / l;
        }
        // YT = V^T E^T with V^T = x[b, :, tn] as [C, HW]: the reconstruction in output layout.
        const Tensor ET = view2d(S, HW, bm, 1, HW);
        if (bf16) {
          convert(S, Eb, bm * HW);
          mm_into(view2d(YTb, C, bm, bm, 1), values.native(b, tn), view2d(Eb, HW, bm, 1, HW));
        } else {
          mm_into(view2d(YT, C, bm, bm, 1), values.get(tid, b, tn), ET);
        }
        if (contrastive) {
          // phi = P vphi, accumulated beside P @ V: the gate needs no pass over the output.
          mm_into(view2d(PHT, Ck, bm, bm, 1), view2d(VPHI + (b * T + tn) * HW * Ck, Ck, HW, 1, Ck), ET);
          const acc_t* twr = TW + ((b * T + t) * HW + i0) * Ck;
          for (int64_t r = 0; r < bm; ++r) {
            acc_t u = 0;
            for (int64_t k = 0; k < Ck; ++k) {
              const acc_t ph = PHT[k * bm + r] * inv_l[r];
              phi[(pr + r) * Ck + k] = ph;
              u += twr[r * Ck + k] * ph;
            }
            const acc_t a = acc_t(1) / (acc_t(1) + std::exp(-u));
            gate[pr + r] = a;
            f[r] = a * inv_l[r];
          }
        } else {
          std::copy(inv_l, inv_l + bm, f);
        }
        if (bf16) {
          for_each_cr(os.hw_inner(), C, bm, [&](int64_t c, int64_t r) {
            o[c * os.sC + r * os.sHW] = static_cast<scalar_t>(static_cast<acc_t>(YTb[c * bm + r]) * f[r]);
          });
        } else {
          for_each_cr(os.hw_inner(), C, bm, [&](int64_t c, int64_t r) {
            o[c * os.sC + r * os.sHW] = static_cast<scalar_t>(YT[c * bm + r] * f[r]);
          });
        }
      }
    }
  });
}

// --------------------------------------------------------------------------------------------
// Backward: one work item = (clip b, neighbour frame tn). It visits every pair whose keys and
// values are frame tn, so dV (dx[b, :, tn], centre-copy term included), dK (DKT[b, tn]) and dvphi
// (DVPHIT[b, tn]) have a single writer; dq and the gate's dlogit are written per pair (disjoint
// rows) and reduced afterwards. With z = a * y and R = sum_c dz * z (FlashAttention's delta):
//   dy = a * dz,  dlogit = (1 - a) R,  dphi = dlogit * tw,  dvphi += P^T dphi,
//   delta = sum_c dy * y = R  (+ dphi . phi when the gate's input is not detached, because then
//   phi = P vphi also sends dP += dphi vphi^T),
// all without dividing by a (which may underflow). dx of a frame is accumulated in float32 in
// place (float32 / float64 x) or in a per-thread frame buffer (16-bit x), then stored once.
// --------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void backward_kernel(const Geometry& geo, const scalar_t* x, Strided xs, const acc_t* Q, const acc_t* VPHI,
                     const acc_t* TW, const scalar_t* out, Strided os, const scalar_t* dout, Strided ds,
                     const acc_t* lse, const acc_t* gate, const acc_t* phi, scalar_t* dx, Strided gs, acc_t* DQ,
                     acc_t* DKT, acc_t* DVPHIT, acc_t* DLOGIT, acc_t scale, bool contrastive, bool detach) {
  constexpr bool kConvert = FrameSource<scalar_t, acc_t>::kConvert;
  const int64_t B = geo.B, C = geo.C, T = geo.T, HW = geo.HW, Ck = geo.Ck, N = geo.N, nb = geo.nb;
  const int64_t BM = row_block(HW);
  const int64_t nblk = (HW + BM - 1) / BM;
  const int64_t per_thread = 2 * BM * HW + C * BM + 2 * BM * Ck + 2 * BM + (kConvert ? C * HW : 0);
  const int nthreads = at::get_num_threads();
  const Tensor scratch_t =
      at::empty({nthreads * per_thread}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* const scratch = scratch_t.mutable_data_ptr<acc_t>();
  const bool bf16 = use_bf16_gemm<scalar_t>();
  // bf16 GEMMs: per thread, P and dP in bf16 ([bm, HW] each), dY^T in bf16 ([C, bm]) and one
  // block's dY^T P in bf16 ([C, HW]), added to the float32 dx of the frame.
  const int64_t per_thread16 = bf16 ? 2 * BM * HW + C * BM + C * HW : 0;
  const Tensor scratch16_t = at::empty({nthreads * per_thread16}, at::TensorOptions().dtype(
                                                                     c10::CppTypeToScalarType<scalar_t>::value));
  scalar_t* const scratch16 = scratch16_t.mutable_data_ptr<scalar_t>();
  FrameSource<scalar_t, acc_t> values(x, xs, C, HW, 1, bf16 ? 0 : nthreads);  // unused with bf16

  parallel_items(B * T, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    acc_t* P = scratch + tid * per_thread;  // [bm, HW] probabilities
    acc_t* dP = P + BM * HW;                // [bm, HW] dP, then dS
    acc_t* dYT = dP + BM * HW;              // [C, bm] gradient of y, transposed
    acc_t* DPH = dYT + C * BM;              // [bm, Ck] gradient of phi
    acc_t* DQT = DPH + BM * Ck;             // [Ck, bm] dq of the row block, transposed
    acc_t* zd = DQT + BM * Ck;              // [bm] R = sum_c dz * z
    acc_t* delta = zd + BM;                 // [bm] sum_c dy * y (+ dphi . phi)
    acc_t* dxbuf = delta + BM;              // [C, HW] float32 dx of the frame (16-bit x only)
    scalar_t* Pb = scratch16 + tid * per_thread16;  // bf16 path only
    scalar_t* dPb = Pb + BM * HW;
    scalar_t* dYTb = dPb + BM * HW;
    scalar_t* dXb = dYTb + C * BM;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / T, tn = item % T;
      const Tensor Xn = bf16 ? values.native(b, tn) : values.get(tid, b, tn);
      // dx of frame tn starts as the gradient of its centre copy in the output.
      const scalar_t* dcentre = dout + ds.frame(b, tn * N + geo.half);
      Tensor dXn;
      if constexpr (kConvert) {
        for_each_cr(ds.hw_inner(), C, HW, [&](int64_t c, int64_t i) {
          dxbuf[c * HW + i] = static_cast<acc_t>(dcentre[c * ds.sC + i * ds.sHW]);
        });
        dXn = view2d(dxbuf, C, HW, HW, 1);
      } else {
        acc_t* g = dx + gs.frame(b, tn);
        for_each_cr(gs.hw_inner(), C, HW,
                    [&](int64_t c, int64_t i) { g[c * gs.sC + i * gs.sHW] = dcentre[c * ds.sC + i * ds.sHW]; });
        dXn = view2d(g, C, HW, gs.sC, gs.sHW);
      }
      const Tensor KT = view2d(Q + (b * T + tn) * HW * Ck, Ck, HW, 1, Ck);
      // dK and dvphi are accumulated transposed ([Ck, HW]): GEMMs with a tiny output width (Ck)
      // run far below peak in the BLAS, the transposed shapes do not.
      Tensor DKTm = view2d(DKT + (b * T + tn) * Ck * HW, Ck, HW, HW, 1);
      Tensor DVPm = contrastive ? view2d(DVPHIT + (b * T + tn) * Ck * HW, Ck, HW, HW, 1) : Tensor();
      const Tensor VPT = contrastive ? view2d(VPHI + (b * T + tn) * HW * Ck, Ck, HW, 1, Ck) : Tensor();
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t t = tn - geo.offsets[j];  // centre whose neighbour j is tn
        if (t < 0 || t >= T) continue;
        for (int64_t blk = 0; blk < nblk; ++blk) {
          const int64_t i0 = blk * BM, bm = std::min(BM, HW - i0);
          const int64_t pr = ((b * T + t) * nb + j) * HW + i0;
          const acc_t* Qp = Q + ((b * T + t) * HW + i0) * Ck;
          const Tensor Pm = view2d(P, bm, HW, HW, 1);
          Tensor dPm = view2d(dP, bm, HW, HW, 1);
          mm_into(Pm, view2d(Qp, bm, Ck, Ck, 1), KT);
          for (int64_t r = 0; r < bm; ++r) math::exp_shift_row(P + r * HW, HW, scale, lse[pr + r]);

          const int64_t slot = t * N + geo.slot(j);
          const scalar_t* dz = dout + ds.frame(b, slot) + i0 * ds.sHW;
          const scalar_t* z = out + os.frame(b, slot) + i0 * os.sHW;
          const acc_t* a = contrastive ? gate + pr : nullptr;
          std::fill(zd, zd + bm, acc_t(0));
          const auto read_dz = [&](int64_t c, int64_t r) {
            const acc_t dzv = static_cast<acc_t>(dz[c * ds.sC + r * ds.sHW]);
            zd[r] += dzv * static_cast<acc_t>(z[c * os.sC + r * os.sHW]);
            return dzv;
          };
          if (contrastive) {  // two loops rather than a branch per element: both vectorise
            for_each_cr(ds.hw_inner(), C, bm, [&](int64_t c, int64_t r) { dYT[c * bm + r] = a[r] * read_dz(c, r); });
          } else {
            for_each_cr(ds.hw_inner(), C, bm, [&](int64_t c, int64_t r) { dYT[c * bm + r] = read_dz(c, r); });
          }
          if (contrastive) {
            const acc_t* twr = TW + ((b * T + t) * HW + i0) * Ck;
            const acc_t* ph = phi + pr * Ck;
            for (int64_t r = 0; r < bm; ++r) {
              const acc_t dlogit = (acc_t(1) - a[r]) * zd[r];
              DLOGIT[pr + r] = dlogit;
              acc_t s = 0;
              for (int64_t k = 0; k < Ck; ++k) {
                DPH[r * Ck + k] = dlogit * twr[r * Ck + k];
                s += DPH[r * Ck + k] * ph[r * Ck + k];
              }
              delta[r] = detach ? zd[r] : zd[r] + s;
            }
          } else {
            std::copy(zd, zd + bm, delta);
          }
          // dP = dY V^T (+ dphi vphi^T when the gate's input is attached), then dS in place.
          if (bf16) {
            convert(dYT, dYTb, C * bm);
            mm_into(view2d(dPb, bm, HW, HW, 1), view2d(dYTb, bm, C, 1, bm), Xn);
            convert(dPb, dP, bm * HW);
          } else {
            mm_into(dPm, view2d(dYT, bm, C, 1, bm), Xn);
          }
          if (contrastive && !detach) dPm.addmm_(view2d(DPH, bm, Ck, Ck, 1), VPT);
          for (int64_t r = 0; r < bm; ++r) math::dsoftmax_row(dP + r * HW, P + r * HW, HW, delta[r], scale);
          // dV^T += dY^T P into dx of the neighbour frame; dvphi^T += dphi^T P.
          if (bf16) {  // dxbuf is the float32 [C, HW] dx of frame tn (16-bit x)
            convert(P, Pb, bm * HW);
            mm_into(view2d(dXb, C, HW, HW, 1), view2d(dYTb, C, bm, bm, 1), view2d(Pb, bm, HW, HW, 1));
            for (int64_t i = 0; i < C * HW; ++i) dxbuf[i] += static_cast<acc_t>(dXb[i]);
          } else {
            dXn.addmm_(view2d(dYT, C, bm, bm, 1), Pm);
          }
          if (contrastive) DVPm.addmm_(view2d(DPH, Ck, bm, 1, Ck), Pm);
          mm_into(view2d(DQT, Ck, bm, bm, 1), KT, view2d(dP, HW, bm, 1, HW));
          for (int64_t r = 0; r < bm; ++r)
            for (int64_t k = 0; k < Ck; ++k) DQ[(pr + r) * Ck + k] = DQT[k * bm + r];
          DKTm.addmm_(view2d(Qp, Ck, bm, 1, Ck), dPm);
        }
      }
      if constexpr (kConvert) {
        scalar_t* g = dx + gs.frame(b, tn);
        for_each_cr(gs.hw_inner(), C, HW,
                    [&](int64_t c, int64_t i) { g[c * gs.sC + i * gs.sHW] = static_cast<scalar_t>(dxbuf[c * HW + i]); });
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> apm_forward_cpu(const Tensor& x_in, const Tensor& q,
                                                           const std::optional<Tensor>& vphi,
                                                           const std::optional<Tensor>& tw, double scale,
                                                           int64_t time_dim, bool contrastive,
                                                           bool /*detach_gate_inputs: used by the backward only*/) {
  // The kernel's own ATen calls (mm_out) must run in the accumulation dtype; an enclosing
  // torch.autocast region would otherwise recast them mid-kernel.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_args(x_in, q, vphi, tw, scale, time_dim, contrastive);
  const Geometry geo = make_geometry(x_in, q, time_dim);
  const Tensor x = as_native(x_in);
  const Tensor Q = q.contiguous();
  const Tensor VP = contrastive ? vphi->contiguous() : Tensor();
  const Tensor TW = contrastive ? tw->contiguous() : Tensor();
  Tensor out = at::empty({geo.B, geo.C, geo.N * geo.T, geo.H, geo.W}, x.options().memory_format(memory_format_of(x)));
  const auto acc_opts = Q.options();
  Tensor lse = at::empty({geo.B, geo.T, geo.nb, geo.HW}, acc_opts);
  Tensor gate = contrastive ? at::empty({geo.B, geo.T, geo.nb, geo.HW}, acc_opts) : at::empty({0}, acc_opts);
  Tensor phi = contrastive ? at::empty({geo.B, geo.T, geo.nb, geo.HW, geo.Ck}, acc_opts) : at::empty({0}, acc_opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "apm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(
        geo, x.const_data_ptr<scalar_t>(), strided(x), Q.const_data_ptr<acc_t>(),
        contrastive ? VP.const_data_ptr<acc_t>() : nullptr, contrastive ? TW.const_data_ptr<acc_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), strided(out), lse.mutable_data_ptr<acc_t>(),
        contrastive ? gate.mutable_data_ptr<acc_t>() : nullptr, contrastive ? phi.mutable_data_ptr<acc_t>() : nullptr,
        static_cast<acc_t>(scale), contrastive);
  });
  return {out, lse, gate, phi};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> apm_backward_cpu(const Tensor& grad_out, const Tensor& x_in,
                                                            const Tensor& q, const std::optional<Tensor>& vphi,
                                                            const std::optional<Tensor>& tw, const Tensor& out_in,
                                                            const Tensor& lse, const Tensor& gate, const Tensor& phi,
                                                            double scale, int64_t time_dim, bool contrastive,
                                                            bool detach_gate_inputs) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_args(x_in, q, vphi, tw, scale, time_dim, contrastive);
  const Geometry geo = make_geometry(x_in, q, time_dim);
  const auto acc_type = acc_type_for(x_in.scalar_type());
  const std::vector<int64_t> out_shape = {geo.B, geo.C, geo.N * geo.T, geo.H, geo.W};
  TORCH_CHECK(out_in.sizes() == at::IntArrayRef(out_shape) && grad_out.sizes() == out_in.sizes() &&
                  out_in.scalar_type() == x_in.scalar_type(),
              "apm backward: out and grad_out must have shape [B, C, N*T, H, W] = ", at::IntArrayRef(out_shape),
              " and x's dtype, got ", out_in.sizes(), " and ", grad_out.sizes());
  const std::vector<int64_t> row_shape = {geo.B, geo.T, geo.nb, geo.HW};
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(row_shape) && lse.scalar_type() == acc_type,
              "apm backward: lse must be the forward's saved statistic of shape ", at::IntArrayRef(row_shape), ", got ",
              lse.sizes());
  if (contrastive) {
    TORCH_CHECK(gate.sizes() == lse.sizes() && gate.scalar_type() == acc_type &&
                    phi.sizes() == at::IntArrayRef({geo.B, geo.T, geo.nb, geo.HW, geo.Ck}) &&
                    phi.scalar_type() == acc_type,
                "apm backward: gate / phi do not match the forward's saved statistics");
  }
  const Tensor x = as_native(x_in);
  const Tensor out = as_native(out_in);
  const Tensor dout = as_native(grad_out.to(out.scalar_type()));
  const Tensor Q = q.contiguous();
  const Tensor VP = contrastive ? vphi->contiguous() : Tensor();
  const Tensor TW = contrastive ? tw->contiguous() : Tensor();
  const Tensor lsec = lse.contiguous();
  const Tensor gatec = gate.contiguous();
  const Tensor phic = phi.contiguous();

  const auto acc_opts = Q.options();
  // Every element of dx is written by the kernel (its frame's work item).
  Tensor dx = at::empty(x.sizes(), x.options().memory_format(memory_format_of(x)));
  Tensor DQ = at::zeros({geo.B, geo.T, geo.nb, geo.HW, geo.Ck}, acc_opts);
  Tensor DKT = at::zeros({geo.B, geo.T, geo.Ck, geo.HW}, acc_opts);
  Tensor DVPHIT = contrastive ? at::zeros({geo.B, geo.T, geo.Ck, geo.HW}, acc_opts) : Tensor();
  Tensor DLOGIT = contrastive ? at::zeros({geo.B, geo.T, geo.nb, geo.HW}, acc_opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "apm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t>(
        geo, x.const_data_ptr<scalar_t>(), strided(x), Q.const_data_ptr<acc_t>(),
        contrastive ? VP.const_data_ptr<acc_t>() : nullptr, contrastive ? TW.const_data_ptr<acc_t>() : nullptr,
        out.const_data_ptr<scalar_t>(), strided(out), dout.const_data_ptr<scalar_t>(), strided(dout),
        lsec.const_data_ptr<acc_t>(), contrastive ? gatec.const_data_ptr<acc_t>() : nullptr,
        contrastive ? phic.const_data_ptr<acc_t>() : nullptr, dx.mutable_data_ptr<scalar_t>(), strided(dx),
        DQ.mutable_data_ptr<acc_t>(), DKT.mutable_data_ptr<acc_t>(),
        contrastive ? DVPHIT.mutable_data_ptr<acc_t>() : nullptr, contrastive ? DLOGIT.mutable_data_ptr<acc_t>() : nullptr,
        static_cast<acc_t>(scale), contrastive, detach_gate_inputs);
  });

  // q is both the query of its own frame and the key of its neighbours.
  Tensor dq = DQ.sum(2).add_(DKT.transpose(2, 3));
  Tensor dvphi, dtw;
  if (contrastive) {
    dvphi = DVPHIT.transpose(2, 3).contiguous();
    dtw = (DLOGIT.unsqueeze(-1) * phic).sum(2);  // tw is shared by the N-1 pairs of its centre row
  } else {  // two distinct empties: op outputs must not alias each other
    dvphi = at::empty({0}, acc_opts);
    dtw = at::empty({0}, acc_opts);
  }
  return {dx, dq, dvphi, dtw};
}

std::string apm_cpu_isa() {
#if AP3D_HAVE_MULTIVERSION
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return native_bf16_gemm() ? "x86-64-v4 (AVX-512), bf16 GEMMs for bfloat16 inputs" : "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "portable (compiler auto-vectorisation for the build target)";
#endif
}

}  // namespace ap3d
