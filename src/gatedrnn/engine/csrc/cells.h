// The cells as the fused engine sees them: one struct per cell family, each a forward and a backward
// pointwise pass over one batch row of one step. The equations are those of gatedrnn/cells/*.py (the
// docstrings there are the single source); the loop that calls these is scan_kernel.h, shared by all cells.
//
// A cell struct declares:
//   kGates        gate blocks stacked in W_ih / W_hh (rows = kGates * H)
//   kHasC         carries a cell state c (H) besides h
//   kExtra        (H)-wide blocks saved per step besides the gate activations (GRU keeps W_hn h + b_hn)
//   kSplitGrad    the gradient of the recurrent pre-activation differs from the input one (GRU's r ⊙ …)
//   kRecBias      b_hh gate blocks that must stay on the recurrent side (not folded into x_proj): GRU's n
//   kSavesGates   backward reads the gate activations (the RNN needs only h)
//   kDirectDh     backward writes a part of dL/dh_prev that bypasses W_hh (GRU's z ⊙ dh)
//   kAux          (H)-wide blocks of extra parameters (peephole weights, ...): `aux` in forward and backward;
//                 backward accumulates their gradient into `daux` (one accumulator per thread: rows of one
//                 thread add into the same one; summed by the time loop)
//   kReadsHNext   backward reads h_next (the RNN's tanh derivative); with zoneout the loop passes h̃ there
//   kCandidate    takes a candidate dropout mask `cand` (H) (Semeniuta et al. 2016): the candidate (LSTM g,
//                 GRU n) is multiplied by it where it enters the state; the saved activation stays unmasked
//   kOwnsBiasGrad the biases are added after something the cell does to the GEMM results (LayerNorm), so the
//                 dgate_x / dgate_h the loop turns into dW_ih, dW_hh (gradients w.r.t. the raw x W_ihᵀ, h W_hhᵀ)
//                 are not the biases' gradients: the cell accumulates dL/db_ih then dL/db_hh (G*H each) itself,
//                 into its `daux` row after its kAux blocks, and the loop reads the bias gradients there.
//                 Otherwise (every other cell) the loop sums dgate_x and dgate_h over steps and rows.
//   kStateBlocks  (optional, default 1: `state_blocks<Cell>()`) (H)-wide blocks of the cell-state buffer c: the
//                 loop's c0, c_n, saved c and dc rows are kStateBlocks*H wide (the sLSTM's [c | n | m])
//   kRecState     (optional, default false: `reads_state<Cell>()`) the recurrent GEMM reads the row
//                 [h | state blocks 1..] instead of h, so W_hh is (G*H, P + (kStateBlocks−1)*H) and `rec` holds
//                 W_hh [h | a]; backward: the loop adds the GEMM's dL/d(state blocks 1..) to the previous step's
//                 dc there (the cell writes 0 for them) and dW_hh = Σ dGᵀ [h_prev | a_prev] (FGR's gate recurrence)
//   forward(H, units, RowForward&)  hidden units [0, units) of one row; pointers may start at a unit
//                                   offset (streaming splits units over threads), H is the gate-block stride
//   backward(H, RowBackward&)       all H units of one row
// Names follow the Python reference: i, f, g, o, c_next, h_next; gradients d<var>.
#pragma once

#include <cmath>
#include <cstring>

#include "fastmath.h"

namespace gatedrnn {

// kStateBlocks of a cell, 1 for a cell that does not declare it (every cell but the sLSTM).
template <typename Cell>
constexpr int state_blocks() {
  if constexpr (requires { Cell::kStateBlocks; }) {
    return Cell::kStateBlocks;
  } else {
    return 1;
  }
}

// kRecState of a cell, false for a cell that does not declare it (every cell but FGR).
template <typename Cell>
constexpr bool reads_state() {
  if constexpr (requires { Cell::kRecState; }) {
    return Cell::kRecState;
  } else {
    return false;
  }
}

// (H)-wide blocks the recurrent GEMM reads after h: the state blocks after c for a kRecState cell, else 0.
template <typename Cell>
constexpr int rec_state_blocks() {
  return reads_state<Cell>() ? state_blocks<Cell>() - 1 : 0;
}

template <typename T>
struct RowForward {
  T* gates;          // in: x W_ihᵀ of the step, (G*H); out: gate activations (saved)
  const T* rec;      // W_hh h_prev, (G*H)
  const T* bias;     // b_ih + b_hh folded, (G*H); GRU: b_hn excluded (zeros there), zeros without bias
  const T* rec_bias; // recurrent-side bias blocks (kRecBias * H), zeros without bias
  const T* h_prev;   // (P)
  T* c;              // in: c_prev, out: c_next (H), LSTM only
  T* h_next;         // out: h (P), or o ⊙ tanh(c) (H) for a projected LSTM
  T* extra;          // out: kExtra * H saved values, or nullptr
  bool save;         // write the gate activations back (for backward or a trace)
  const T* aux;      // the cell's extra parameters (kAux * H), or nullptr without any
  const T* cand;     // candidate dropout mask of this step and row (H), or nullptr
};

template <typename T>
struct RowBackward {
  const T* gates;    // saved activations (G*H)
  const T* extra;    // saved extra (kExtra*H)
  const T* c;        // c_next of this step (H)
  const T* c_prev;   // (H)
  const T* h_prev;   // (P)
  const T* h_next;   // h of this step (P)
  const T* dh;       // dL/dh_next (or dL/dm for a projected LSTM)
  T* dc;             // in: dL/dc_next from later steps, out: dL/dc_prev
  T* dgate_x;        // out: dL/d(x-side pre-activation) (G*H)
  T* dgate_h;        // out: dL/d(recurrent pre-activation) (G*H); == dgate_x unless kSplitGrad
  T* dh_prev;        // out: the part of dL/dh_prev that does not go through W_hh (GRU's z ⊙ dh), if any
  T* m;              // out: o ⊙ tanh(c_next) (projected LSTM, for dW_hr), or nullptr
  const T* aux;      // the cell's extra parameters (kAux * H), or nullptr
  T* daux;           // in/out: this row's accumulated dL/daux (kAux * H) [then dL/db_ih, dL/db_hh (G*H each) for
                     // kOwnsBiasGrad], or nullptr
  const T* cand;     // candidate dropout mask of this step and row (H), or nullptr
};

// Calls f.template operator()<A, B>() for two runtime flags of a row pass (save and cand, or m and cand, ...): a
// loop with `if (a.save)` or `cand ? … : …` inside vectorises only with masked loads and stores and a test per
// vector (~3x slower at H = 128), and on NEON and SSE2, which have no masked loads and stores, not at all.
template <typename F>
inline void with_row_flags(bool save, bool cand, const F& f) {
  if (save) cand ? f.template operator()<true, true>() : f.template operator()<true, false>();
  else cand ? f.template operator()<false, true>() : f.template operator()<false, false>();
}

template <typename T>
struct LSTMCell {
  static constexpr int kGates = 4, kExtra = 0, kRecBias = 0, kAux = 0;
  static constexpr bool kHasC = true, kSplitGrad = false, kSavesGates = true, kDirectDh = false, kReadsHNext = false,
                        kOwnsBiasGrad = false;
  static constexpr bool kCandidate = true;

  static void forward(int H, int units, const RowForward<T>& a) {
    with_row_flags(a.save, a.cand != nullptr, [&]<bool kSave, bool kCand>() { pass<kSave, kCand>(H, units, a); });
  }

  template <bool kSave, bool kCand>
  static void pass(int H, int units, const RowForward<T>& a) {
    T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    const T* __restrict__ cand = a.cand;
    T* __restrict__ c = a.c;
    T* __restrict__ h = a.h_next;
#pragma GCC ivdep
    for (int j = 0; j < units; ++j) {
      const T i = sigmoid(pre[j] + rec[j] + bias[j]);
      const T f = sigmoid(pre[H + j] + rec[H + j] + bias[H + j]);
      const T g = tanh_(pre[2 * H + j] + rec[2 * H + j] + bias[2 * H + j]);
      const T o = sigmoid(pre[3 * H + j] + rec[3 * H + j] + bias[3 * H + j]);
      T c_next;
      if constexpr (kCand) c_next = f * c[j] + i * (g * cand[j]);
      else c_next = f * c[j] + i * g;
      if constexpr (kSave) pre[j] = i, pre[H + j] = f, pre[2 * H + j] = g, pre[3 * H + j] = o;
      c[j] = c_next;
      h[j] = o * tanh_(c_next);
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    with_row_flags(a.m != nullptr, a.cand != nullptr,
                   [&]<bool kM, bool kCand>() { backward_pass<kM, kCand>(H, a); });
  }

  template <bool kM, bool kCand>
  static void backward_pass(int H, const RowBackward<T>& a) {
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ c = a.c;
    const T* __restrict__ c_prev = a.c_prev;
    const T* __restrict__ dh = a.dh;
    T* __restrict__ dc_io = a.dc;
    T* __restrict__ dG = a.dgate_x;
    T* __restrict__ m = a.m;
    const T* __restrict__ cand = a.cand;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T i = gate[j], f = gate[H + j], g = gate[2 * H + j], o = gate[3 * H + j];
      const T keep = kCand ? cand[j] : T(1);
      const T tanh_c = tanh_(c[j]);
      if constexpr (kM) m[j] = o * tanh_c;                      // h_next = o ⊙ tanh(c_next)
      const T do_ = dh[j] * tanh_c;
      const T dc = dc_io[j] + dh[j] * o * (T(1) - tanh_c * tanh_c);
      const T di = dc * g * keep, dg = dc * i * keep, df = dc * c_prev[j];  // c_next = f ⊙ c + i ⊙ (g ⊙ keep)
      dc_io[j] = dc * f;
      dG[j] = di * i * (T(1) - i);                               // i = σ(·), f = σ(·), g = tanh(·), o = σ(·)
      dG[H + j] = df * f * (T(1) - f);
      dG[2 * H + j] = dg * (T(1) - g * g);
      dG[3 * H + j] = do_ * o * (T(1) - o);
    }
  }
};

template <typename T>
struct GRUCell {
  static constexpr int kGates = 3, kExtra = 1, kRecBias = 1, kAux = 0;
  static constexpr bool kHasC = false, kSplitGrad = true, kSavesGates = true, kDirectDh = true, kReadsHNext = false,
                        kOwnsBiasGrad = false;
  static constexpr bool kCandidate = true;

  static void forward(int H, int units, const RowForward<T>& a) {
    with_row_flags(a.save, a.cand != nullptr, [&]<bool kSave, bool kCand>() {
      if (a.extra) pass<kSave, kCand, true>(H, units, a);
      else pass<kSave, kCand, false>(H, units, a);
    });
  }

  template <bool kSave, bool kCand, bool kHn>
  static void pass(int H, int units, const RowForward<T>& a) {
    T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    const T* __restrict__ cand = a.cand;
    const T* __restrict__ b_hn = a.rec_bias;
    const T* __restrict__ h = a.h_prev;
    T* __restrict__ h_next = a.h_next;
    T* __restrict__ hn_out = a.extra;
#pragma GCC ivdep
    for (int j = 0; j < units; ++j) {
      const T r = sigmoid(pre[j] + rec[j] + bias[j]);
      const T z = sigmoid(pre[H + j] + rec[H + j] + bias[H + j]);
      const T hn = rec[2 * H + j] + b_hn[j];                     // W_hn h + b_hn
      const T n = tanh_(pre[2 * H + j] + bias[2 * H + j] + r * hn);
      if constexpr (kSave) pre[j] = r, pre[H + j] = z, pre[2 * H + j] = n;
      if constexpr (kHn) hn_out[j] = hn;
      h_next[j] = (T(1) - z) * (kCand ? n * cand[j] : n) + z * h[j];
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    if (a.cand) backward_pass<true>(H, a);
    else backward_pass<false>(H, a);
  }

  template <bool kCand>
  static void backward_pass(int H, const RowBackward<T>& a) {
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ hn = a.extra;
    const T* __restrict__ h = a.h_prev;
    const T* __restrict__ dh = a.dh;
    T* __restrict__ dGx = a.dgate_x;
    T* __restrict__ dGh = a.dgate_h;
    T* __restrict__ dh_prev = a.dh_prev;
    const T* __restrict__ cand = a.cand;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T r = gate[j], z = gate[H + j], n = gate[2 * H + j];
      const T keep = kCand ? cand[j] : T(1);
      const T dz = dh[j] * (h[j] - n * keep);                    // h_next = (1 − z) ⊙ (n ⊙ keep) + z ⊙ h
      const T dn = dh[j] * (T(1) - z) * keep;
      dh_prev[j] = dh[j] * z;
      const T dn_pre = dn * (T(1) - n * n);                      // n = tanh(x_n + r ⊙ hn)
      const T dr_pre = dn_pre * hn[j] * r * (T(1) - r);
      const T dz_pre = dz * z * (T(1) - z);
      dGx[j] = dr_pre, dGx[H + j] = dz_pre, dGx[2 * H + j] = dn_pre;
      dGh[j] = dr_pre, dGh[H + j] = dz_pre, dGh[2 * H + j] = dn_pre * r;
    }
  }
};

template <typename T, bool kRelu>
struct RNNCell {
  static constexpr int kGates = 1, kExtra = 0, kRecBias = 0, kAux = 0;
  static constexpr bool kHasC = false, kSplitGrad = false, kSavesGates = false, kDirectDh = false, kReadsHNext = true,
                        kOwnsBiasGrad = false;
  static constexpr bool kCandidate = false;

  static void forward(int H, int units, const RowForward<T>& a) {
    const T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    T* __restrict__ h_next = a.h_next;
#pragma GCC ivdep
    for (int j = 0; j < units; ++j) {
      const T pre_a = pre[j] + rec[j] + bias[j];                           // a = W_ih x + b_ih + W_hh h + b_hh
      h_next[j] = kRelu ? (pre_a > T(0) ? pre_a : T(0)) : tanh_(pre_a);
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    const T* __restrict__ h = a.h_next;
    const T* __restrict__ dh = a.dh;
    T* __restrict__ dG = a.dgate_x;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T dh_j = dh[j];  // read unconditionally: a load under `h > 0` vectorises only with masked loads
      dG[j] = kRelu ? (h[j] > T(0) ? dh_j : T(0)) : dh_j * (T(1) - h[j] * h[j]);
    }
  }
};

// The LSTM of Greff et al. 2017 ("LSTM: A Search Space Odyssey"): peepholes, and the variants that each remove
// or change one part (equations: gatedrnn/cells/lstm_variants.py). NP (no peepholes) is LSTMCell; FGR is
// FGRLSTMCell below. Gate blocks present, in this order: i (not NIG, CIFG), f (not NFG), g, o (not NOG);
// peephole weights p_i, p_f, p_o for the gates present (aux blocks, same order).
enum class Greff { kVanilla, kNIG, kNFG, kNOG, kNIAF, kNOAF, kCIFG };

template <typename T, Greff V>
struct PeepholeLSTMCell {
  static constexpr bool kI = V != Greff::kNIG && V != Greff::kCIFG, kF = V != Greff::kNFG, kO = V != Greff::kNOG;
  static constexpr int kGates = 1 + kI + kF + kO, kExtra = 0, kRecBias = 0, kAux = kI + kF + kO;
  static constexpr bool kHasC = true, kSplitGrad = false, kSavesGates = true, kDirectDh = false, kReadsHNext = false,
                        kOwnsBiasGrad = false;
  static constexpr bool kCandidate = true;
  static constexpr int kBi = 0, kBf = kI, kBg = kI + kF, kBo = kI + kF + 1;  // gate block offsets (in H)
  static constexpr int kPi = 0, kPf = kI, kPo = kI + kF;                     // peephole block offsets

  static void forward(int H, int units, const RowForward<T>& a) {
    with_row_flags(a.save, a.cand != nullptr, [&]<bool kSave, bool kCand>() { pass<kSave, kCand>(H, units, a); });
  }

  template <bool kSave, bool kCand>
  static void pass(int H, int units, const RowForward<T>& a) {
    T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    const T* __restrict__ p = a.aux;
    const T* __restrict__ cand = a.cand;
    T* __restrict__ c = a.c;
    T* __restrict__ h = a.h_next;
    auto z = [&](int block, int j) { return pre[block * H + j] + rec[block * H + j] + bias[block * H + j]; };
#pragma GCC ivdep
    for (int j = 0; j < units; ++j) {
      const T c_prev = c[j];
      const T f = kF ? sigmoid(z(kBf, j) + p[kPf * H + j] * c_prev) : T(1);
      const T i = kI ? sigmoid(z(kBi, j) + p[kPi * H + j] * c_prev) : (V == Greff::kCIFG ? T(1) - f : T(1));
      const T g = V == Greff::kNIAF ? z(kBg, j) : tanh_(z(kBg, j));
      const T c_next = f * c_prev + i * (kCand ? g * cand[j] : g);
      const T o = kO ? sigmoid(z(kBo, j) + p[kPo * H + j] * c_next) : T(1);
      if constexpr (kSave) {
        if (kI) pre[kBi * H + j] = i;
        if (kF) pre[kBf * H + j] = f;
        pre[kBg * H + j] = g;
        if (kO) pre[kBo * H + j] = o;
      }
      c[j] = c_next;
      h[j] = o * (V == Greff::kNOAF ? c_next : tanh_(c_next));
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    with_row_flags(a.m != nullptr, a.cand != nullptr,
                   [&]<bool kM, bool kCand>() { backward_pass<kM, kCand>(H, a); });
  }

  template <bool kM, bool kCand>
  static void backward_pass(int H, const RowBackward<T>& a) {
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ c = a.c;
    const T* __restrict__ c_prev = a.c_prev;
    const T* __restrict__ dh = a.dh;
    const T* __restrict__ p = a.aux;
    T* __restrict__ dp = a.daux;
    T* __restrict__ dc_io = a.dc;
    T* __restrict__ dG = a.dgate_x;
    T* __restrict__ m = a.m;
    const T* __restrict__ cand = a.cand;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T keep = kCand ? cand[j] : T(1);
      const T f = kF ? gate[kBf * H + j] : T(1);
      const T i = kI ? gate[kBi * H + j] : (V == Greff::kCIFG ? T(1) - f : T(1));
      const T g = gate[kBg * H + j], o = kO ? gate[kBo * H + j] : T(1);
      const T act_c = V == Greff::kNOAF ? c[j] : tanh_(c[j]);                  // h = o ⊙ act(c_next)
      if constexpr (kM) m[j] = o * act_c;
      const T do_pre = kO ? dh[j] * act_c * o * (T(1) - o) : T(0);
      T dc = dc_io[j] + dh[j] * o * (V == Greff::kNOAF ? T(1) : T(1) - act_c * act_c);
      if (kO) dc += do_pre * p[kPo * H + j];                                   // o peeks at c_next
      const T di = dc * g * keep, dg = dc * i * keep;                          // c_next = f ⊙ c + i ⊙ (g ⊙ keep)
      const T df = dc * c_prev[j] - (V == Greff::kCIFG ? di : T(0));          // CIFG: i = 1 − f
      const T di_pre = kI ? di * i * (T(1) - i) : T(0);
      const T df_pre = kF ? df * f * (T(1) - f) : T(0);
      T dc_prev = dc * f;
      if (kI) dG[kBi * H + j] = di_pre, dc_prev += di_pre * p[kPi * H + j], dp[kPi * H + j] += di_pre * c_prev[j];
      if (kF) dG[kBf * H + j] = df_pre, dc_prev += df_pre * p[kPf * H + j], dp[kPf * H + j] += df_pre * c_prev[j];
      dG[kBg * H + j] = V == Greff::kNIAF ? dg : dg * (T(1) - g * g);
      if (kO) dG[kBo * H + j] = do_pre, dp[kPo * H + j] += do_pre * c[j];
      dc_io[j] = dc_prev;
    }
  }
};

// Greff et al.'s FGR (full gate recurrence; equations: gatedrnn/cells/fgr.py): the vanilla peephole LSTM whose
// gates i, f, o also read the previous step's gates a′ = [i′ | f′ | o′] through R_g. State [c | i′ | f′ | o′]
// (kStateBlocks = 4); the loop's GEMM reads [h | i′ | f′ | o′] (kRecState), with the kernel W_hh = [W_hh | R]
// (R: R_g's rows in the i, f, o blocks, zeros in g; CellSpec.kernel_weights), so `rec` already holds
// r + a′ R_gᵀ. Backward: dL/da_t (from the next step's GEMM, in dc's blocks 1..3) joins di, df, do before σ'.
template <typename T>
struct FGRLSTMCell {
  static constexpr int kGates = 4, kExtra = 0, kRecBias = 0, kAux = 3, kStateBlocks = 4;
  static constexpr bool kHasC = true, kSplitGrad = false, kSavesGates = true, kDirectDh = false, kReadsHNext = false,
                        kOwnsBiasGrad = false, kCandidate = true, kRecState = true;

  static void forward(int H, int units, const RowForward<T>& a) {
    T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    const T* __restrict__ p = a.aux;  // [p_i | p_f | p_o]
    const T* __restrict__ cand = a.cand;
    T* __restrict__ state = a.c;      // [c | i′ | f′ | o′], in: previous, out: next
    T* __restrict__ h = a.h_next;
    auto z = [&](int block, int j) { return pre[block * H + j] + rec[block * H + j] + bias[block * H + j]; };
#pragma GCC ivdep
    for (int j = 0; j < units; ++j) {
      const T c_prev = state[j];
      const T i = sigmoid(z(0, j) + p[j] * c_prev);  // rec holds r + q: the gate recurrence is in the GEMM
      const T f = sigmoid(z(1, j) + p[H + j] * c_prev);
      const T g = tanh_(z(2, j));
      const T c_next = f * c_prev + i * (cand ? g * cand[j] : g);
      const T o = sigmoid(z(3, j) + p[2 * H + j] * c_next);
      if (a.save) pre[j] = i, pre[H + j] = f, pre[2 * H + j] = g, pre[3 * H + j] = o;
      state[j] = c_next, state[H + j] = i, state[2 * H + j] = f, state[3 * H + j] = o;  // a_next = [i | f | o]
      h[j] = o * tanh_(c_next);
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ c = a.c;            // [c_t | a_t]: c_next is block 0
    const T* __restrict__ c_prev = a.c_prev;  // [c | a′] of the previous step: c is block 0
    const T* __restrict__ dh = a.dh;
    const T* __restrict__ p = a.aux;
    T* __restrict__ dp = a.daux;
    T* __restrict__ d_state = a.dc;           // in: [dc_next | da_i | da_f | da_o], out: [dc_prev | 0 | 0 | 0]
    T* __restrict__ dG = a.dgate_x;
    T* __restrict__ m = a.m;
    const T* __restrict__ cand = a.cand;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T keep = cand ? cand[j] : T(1);
      const T i = gate[j], f = gate[H + j], g = gate[2 * H + j], o = gate[3 * H + j];
      const T tanh_c = tanh_(c[j]);                                          // h_next = o ⊙ tanh(c_next)
      if (m) m[j] = o * tanh_c;
      const T do_pre = (dh[j] * tanh_c + d_state[3 * H + j]) * o * (T(1) - o);  // a_next = [i | f | o]
      T dc = d_state[j] + dh[j] * o * (T(1) - tanh_c * tanh_c) + do_pre * p[2 * H + j];  // o peeks at c_next
      const T di = dc * g * keep + d_state[H + j], dg = dc * i * keep;       // c_next = f ⊙ c + i ⊙ (g ⊙ keep)
      const T df = dc * c_prev[j] + d_state[2 * H + j];
      const T di_pre = di * i * (T(1) - i), df_pre = df * f * (T(1) - f);    // i, f, o = σ(·)
      dG[j] = di_pre, dG[H + j] = df_pre, dG[2 * H + j] = dg * (T(1) - g * g), dG[3 * H + j] = do_pre;
      dp[j] += di_pre * c_prev[j], dp[H + j] += df_pre * c_prev[j], dp[2 * H + j] += do_pre * c[j];
      d_state[j] = dc * f + di_pre * p[j] + df_pre * p[H + j];
      d_state[H + j] = T(0), d_state[2 * H + j] = T(0), d_state[3 * H + j] = T(0);  // a′ reaches the loss via the GEMM
    }
  }
};

// ----- LayerNorm cells (Ba, Kiros & Hinton 2016, haste's placement; equations: gatedrnn/cells/layernorm.py) -----
// pre = LN(x W_ihᵀ; γ_ih) + LN(h W_hhᵀ; γ_hh) + biases, each LN over its whole row of G*H values, so the forward
// needs whole rows (units == H: the streaming step kernel, which splits units, does not take aux cells).
// Saved (kExtra): the raw x W_ihᵀ and h W_hhᵀ rows (2G blocks); backward recomputes their mean and rstd (no
// per-row scalars to store) and LN(c_next)'s from c_next, which the loop saves. The gains' and the biases'
// gradients go to daux (kOwnsBiasGrad): aux = [γ_ih (G*H) | γ_hh (G*H) | (LSTM) γ_c (H) | β_c (H)].

constexpr double kLayerNormEps = 1e-5;  // gatedrnn.cells.layernorm.LAYER_NORM_EPS (haste's, torch.nn.LayerNorm's)

// mean(a) and rstd = 1 / sqrt(var(a) + ε) over a[0, n), var biased; two passes (the mean, then the squared
// deviations), so float keeps its precision when the mean is large against the spread.
template <typename T>
inline void row_moments(const T* __restrict__ a, int n, T& mean, T& rstd) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int k = 0; k < n; ++k) sum += a[k];
  const T mu = sum / T(n);
  T sq = T(0);
#pragma omp simd reduction(+ : sq)
  for (int k = 0; k < n; ++k) sq += (a[k] - mu) * (a[k] - mu);
  mean = mu;
  rstd = T(1) / std::sqrt(sq / T(n) + T(kLayerNormEps));
}

// row_moments of two rows of n values at once (the x and h sides of a LayerNorm cell): one loop per pass.
template <typename T>
inline void row_moments2(const T* __restrict__ a, const T* __restrict__ b, int n, T& mean_a, T& rstd_a, T& mean_b,
                         T& rstd_b) {
  T sum_a = T(0), sum_b = T(0);
#pragma omp simd reduction(+ : sum_a, sum_b)
  for (int k = 0; k < n; ++k) sum_a += a[k], sum_b += b[k];
  const T mu_a = sum_a / T(n), mu_b = sum_b / T(n);
  T sq_a = T(0), sq_b = T(0);
#pragma omp simd reduction(+ : sq_a, sq_b)
  for (int k = 0; k < n; ++k) sq_a += (a[k] - mu_a) * (a[k] - mu_a), sq_b += (b[k] - mu_b) * (b[k] - mu_b);
  mean_a = mu_a, mean_b = mu_b;
  rstd_a = T(1) / std::sqrt(sq_a / T(n) + T(kLayerNormEps));
  rstd_b = T(1) / std::sqrt(sq_b / T(n) + T(kLayerNormEps));
}

// Backward of pre = LN(a; γ) + b over one row of n values, in place: d holds dL/dpre on entry, dL/da on exit.
//   x̂ = (a − mean) rstd, pre = γ ⊙ x̂ + b:  dγ += dpre ⊙ x̂,  db += dpre,
//   da = rstd (γ ⊙ dpre − mean(γ ⊙ dpre) − x̂ ⊙ mean(γ ⊙ dpre ⊙ x̂)).
template <typename T>
inline void layer_norm_backward(int n, const T* __restrict__ a, const T* __restrict__ gamma, T* __restrict__ d,
                                T* __restrict__ dgamma, T* __restrict__ dbias) {
  T mean, rstd;
  row_moments(a, n, mean, rstd);
  T sum_gd = T(0), sum_gdx = T(0);
#pragma omp simd reduction(+ : sum_gd, sum_gdx)
  for (int k = 0; k < n; ++k) {
    const T x_hat = (a[k] - mean) * rstd, gd = gamma[k] * d[k];
    sum_gd += gd, sum_gdx += gd * x_hat;
    dgamma[k] += d[k] * x_hat;
    dbias[k] += d[k];
  }
  const T mean_gd = sum_gd / T(n), mean_gdx = sum_gdx / T(n);
#pragma GCC ivdep
  for (int k = 0; k < n; ++k) {
    const T x_hat = (a[k] - mean) * rstd;
    d[k] = rstd * (gamma[k] * d[k] - mean_gd - x_hat * mean_gdx);
  }
}

template <typename T>
struct LayerNormLSTMCell {
  static constexpr int kGates = 4, kExtra = 8, kRecBias = 0, kAux = 10;
  static constexpr bool kHasC = true, kSplitGrad = true, kSavesGates = true, kDirectDh = false, kReadsHNext = false,
                        kOwnsBiasGrad = true;
  static constexpr bool kCandidate = false;  // candidate dropout is not wired into the LayerNorm cells

  static void forward(int H, int /*units == H*/, const RowForward<T>& a) {
    const int GH = kGates * H;
    T* __restrict__ pre = a.gates;  // x W_ihᵀ in, gate activations out (always: o is read again below)
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    const T* __restrict__ gamma_ih = a.aux;
    const T* __restrict__ gamma_hh = a.aux + GH;
    const T* __restrict__ gamma_c = a.aux + 2 * GH;
    const T* __restrict__ beta_c = a.aux + 2 * GH + H;
    T* __restrict__ c = a.c;
    T* __restrict__ h = a.h_next;
    T mean_x, rstd_x, mean_h, rstd_h;
    row_moments2(pre, rec, GH, mean_x, rstd_x, mean_h, rstd_h);
    if (a.extra) {  // what backward reads: the raw rows
      std::memcpy(a.extra, pre, sizeof(T) * GH);
      std::memcpy(a.extra + GH, rec, sizeof(T) * GH);
    }
    // LN(wx; γ_ih) + LN(wh; γ_hh) + b = γ_ih (wx − mean_x) rstd_x + γ_hh (wh − mean_h) rstd_h + b
    auto z = [&](int k) {
      return gamma_ih[k] * ((pre[k] - mean_x) * rstd_x) + gamma_hh[k] * ((rec[k] - mean_h) * rstd_h) + bias[k];
    };
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T i = sigmoid(z(j)), f = sigmoid(z(H + j)), g = tanh_(z(2 * H + j)), o = sigmoid(z(3 * H + j));
      pre[j] = i, pre[H + j] = f, pre[2 * H + j] = g, pre[3 * H + j] = o;
      c[j] = f * c[j] + i * g;                                          // c_next = f ⊙ c + i ⊙ g
    }
    T mean_c, rstd_c;
    row_moments(c, H, mean_c, rstd_c);
#pragma GCC ivdep
    for (int j = 0; j < H; ++j)                                         // h_next = o ⊙ tanh(LN(c_next; γ_c, β_c))
      h[j] = pre[3 * H + j] * tanh_(gamma_c[j] * ((c[j] - mean_c) * rstd_c) + beta_c[j]);
  }

  static void backward(int H, const RowBackward<T>& a) {
    const int GH = kGates * H;
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ c = a.c;
    const T* __restrict__ c_prev = a.c_prev;
    const T* __restrict__ dh = a.dh;
    const T* __restrict__ wx = a.extra;       // x W_ihᵀ (G*H)
    const T* __restrict__ wh = a.extra + GH;  // h W_hhᵀ (G*H)
    const T* __restrict__ gamma_ih = a.aux;
    const T* __restrict__ gamma_hh = a.aux + GH;
    const T* __restrict__ gamma_c = a.aux + 2 * GH;
    const T* __restrict__ beta_c = a.aux + 2 * GH + H;
    T* __restrict__ dgamma_ih = a.daux;
    T* __restrict__ dgamma_hh = a.daux + GH;
    T* __restrict__ dgamma_c = a.daux + 2 * GH;
    T* __restrict__ dbeta_c = a.daux + 2 * GH + H;
    T* __restrict__ db_ih = a.daux + kAux * H;
    T* __restrict__ db_hh = a.daux + kAux * H + GH;
    T* __restrict__ dc_io = a.dc;
    T* __restrict__ dpre = a.dgate_x;  // dL/dpre first, then (layer_norm_backward) dL/d(x W_ihᵀ)
    T* const dGh = a.dgate_h;          // scratch (ĉ, dĉ) until it receives dL/d(h W_hhᵀ): no __restrict__
    T* const c_hat = dGh;
    T* const dc_hat = dGh + H;
    // h_next = o ⊙ tanh(y), y = γ_c ⊙ ĉ + β_c, ĉ = (c_next − mean_c) rstd_c
    T mean_c, rstd_c;
    row_moments(c, H, mean_c, rstd_c);
    T sum_dch = T(0), sum_dch_ch = T(0);
#pragma omp simd reduction(+ : sum_dch, sum_dch_ch)
    for (int j = 0; j < H; ++j) {
      const T o = gate[3 * H + j];
      const T ch = (c[j] - mean_c) * rstd_c;
      const T t = tanh_(gamma_c[j] * ch + beta_c[j]);
      dpre[3 * H + j] = dh[j] * t * o * (T(1) - o);                    // o = σ(pre_o)
      const T dy = dh[j] * o * (T(1) - t * t);
      dgamma_c[j] += dy * ch, dbeta_c[j] += dy;
      const T dch = gamma_c[j] * dy;
      c_hat[j] = ch, dc_hat[j] = dch;
      sum_dch += dch, sum_dch_ch += dch * ch;
    }
    const T mean_dch = sum_dch / T(H), mean_dch_ch = sum_dch_ch / T(H);
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      // dL/dc_next: from later steps, and through LN(c_next) (the LN backward of layer_norm_backward)
      const T dc = dc_io[j] + rstd_c * (dc_hat[j] - mean_dch - c_hat[j] * mean_dch_ch);
      const T i = gate[j], f = gate[H + j], g = gate[2 * H + j];
      dpre[j] = dc * g * i * (T(1) - i);                                 // c_next = f ⊙ c + i ⊙ g
      dpre[H + j] = dc * c_prev[j] * f * (T(1) - f);
      dpre[2 * H + j] = dc * i * (T(1) - g * g);
      dc_io[j] = dc * f;
    }
    // pre = LN(wx; γ_ih) + LN(wh; γ_hh) + b_ih + b_hh: both normalisations and both biases see dpre;
    // layer_norm_backward for the two sides at once (one pass per stage over both rows)
    T mean_x, rstd_x, mean_h, rstd_h;
    row_moments2(wx, wh, GH, mean_x, rstd_x, mean_h, rstd_h);
    T sum_gx = T(0), sum_gx_x = T(0), sum_gh = T(0), sum_gh_h = T(0);
#pragma omp simd reduction(+ : sum_gx, sum_gx_x, sum_gh, sum_gh_h)
    for (int k = 0; k < GH; ++k) {
      const T d = dpre[k];
      const T x_hat = (wx[k] - mean_x) * rstd_x, h_hat = (wh[k] - mean_h) * rstd_h;
      const T gx = gamma_ih[k] * d, gh = gamma_hh[k] * d;
      sum_gx += gx, sum_gx_x += gx * x_hat, sum_gh += gh, sum_gh_h += gh * h_hat;
      dgamma_ih[k] += d * x_hat, dgamma_hh[k] += d * h_hat;
      db_ih[k] += d, db_hh[k] += d;
    }
    const T inv_n = T(1) / T(GH);
    const T mean_gx = sum_gx * inv_n, mean_gx_x = sum_gx_x * inv_n, mean_gh = sum_gh * inv_n,
            mean_gh_h = sum_gh_h * inv_n;
#pragma GCC ivdep
    for (int k = 0; k < GH; ++k) {
      const T d = dpre[k];
      const T x_hat = (wx[k] - mean_x) * rstd_x, h_hat = (wh[k] - mean_h) * rstd_h;
      dGh[k] = rstd_h * (gamma_hh[k] * d - mean_gh - h_hat * mean_gh_h);   // dL/d(h W_hhᵀ)
      dpre[k] = rstd_x * (gamma_ih[k] * d - mean_gx - x_hat * mean_gx_x);  // dL/d(x W_ihᵀ)
    }
  }
};

template <typename T>
struct LayerNormGRUCell {
  static constexpr int kGates = 3, kExtra = 7, kRecBias = 1, kAux = 6;
  static constexpr bool kHasC = false, kSplitGrad = true, kSavesGates = true, kDirectDh = true, kReadsHNext = false,
                        kOwnsBiasGrad = true;
  static constexpr bool kCandidate = false;  // candidate dropout is not wired into the LayerNorm cells

  static void forward(int H, int /*units == H*/, const RowForward<T>& a) {
    const int GH = kGates * H;
    T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;        // b_ih + b_hh for r, z; b_in for n
    const T* __restrict__ b_hn = a.rec_bias;
    const T* __restrict__ gamma_ih = a.aux;
    const T* __restrict__ gamma_hh = a.aux + GH;
    const T* __restrict__ h = a.h_prev;
    T* __restrict__ h_next = a.h_next;
    T* __restrict__ hn_out = a.extra ? a.extra + 2 * GH : nullptr;
    T mean_x, rstd_x, mean_h, rstd_h;
    row_moments2(pre, rec, GH, mean_x, rstd_x, mean_h, rstd_h);
    if (a.extra) {
      std::memcpy(a.extra, pre, sizeof(T) * GH);
      std::memcpy(a.extra + GH, rec, sizeof(T) * GH);
    }
    auto ln_x = [&](int k) { return gamma_ih[k] * ((pre[k] - mean_x) * rstd_x); };  // LN(wx; γ_ih)
    auto ln_h = [&](int k) { return gamma_hh[k] * ((rec[k] - mean_h) * rstd_h); };  // LN(wh; γ_hh)
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T r = sigmoid(ln_x(j) + ln_h(j) + bias[j]);
      const T z = sigmoid(ln_x(H + j) + ln_h(H + j) + bias[H + j]);
      const T hn = ln_h(2 * H + j) + b_hn[j];                           // h_n = LN(wh)_n + b_hn
      const T n = tanh_(ln_x(2 * H + j) + bias[2 * H + j] + r * hn);
      pre[j] = r, pre[H + j] = z, pre[2 * H + j] = n;
      if (hn_out) hn_out[j] = hn;
      h_next[j] = (T(1) - z) * n + z * h[j];
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    const int GH = kGates * H;
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ wx = a.extra;
    const T* __restrict__ wh = a.extra + GH;
    const T* __restrict__ hn = a.extra + 2 * GH;
    const T* __restrict__ h = a.h_prev;
    const T* __restrict__ dh = a.dh;
    const T* __restrict__ gamma_ih = a.aux;
    const T* __restrict__ gamma_hh = a.aux + GH;
    T* __restrict__ dpre_x = a.dgate_x;  // dL/dpre_x, then dL/d(x W_ihᵀ)
    T* __restrict__ dpre_h = a.dgate_h;  // dL/dpre_h, then dL/d(h W_hhᵀ)
    T* __restrict__ dh_prev = a.dh_prev;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T r = gate[j], z = gate[H + j], n = gate[2 * H + j];
      const T dz = dh[j] * (h[j] - n);                                  // h_next = (1 − z) ⊙ n + z ⊙ h
      const T dn = dh[j] * (T(1) - z);
      dh_prev[j] = dh[j] * z;
      const T dn_pre = dn * (T(1) - n * n);                             // n = tanh(x_n + r ⊙ h_n)
      const T dr_pre = dn_pre * hn[j] * r * (T(1) - r);
      const T dz_pre = dz * z * (T(1) - z);
      dpre_x[j] = dr_pre, dpre_x[H + j] = dz_pre, dpre_x[2 * H + j] = dn_pre;
      dpre_h[j] = dr_pre, dpre_h[H + j] = dz_pre, dpre_h[2 * H + j] = dn_pre * r;
    }
    // pre_x = LN(wx; γ_ih) + b_ih, pre_h = LN(wh; γ_hh) + b_hh
    layer_norm_backward(GH, wx, gamma_ih, dpre_x, a.daux, a.daux + kAux * H);
    layer_norm_backward(GH, wh, gamma_hh, dpre_h, a.daux + GH, a.daux + kAux * H + GH);
  }
};

// ----- sLSTM (xLSTM, Beck et al. 2024; equations: gatedrnn/cells/slstm.py `slstm_step`) -----
// Gate blocks i, f, z, o; the cell-state buffer holds [c | n | m] (kStateBlocks = 3). The block-diagonal (per-head)
// R arrives as the dense (4H, H) W_hh (the Python side builds it), so the loop's GEMMs are the LSTM's.
// Saved: the gate activations i', f', z, o; extra block 0: where m_next = ĩ (take_input): 0 no, 1 yes, 2 yes and
// the min(·, 0) in f' clamps (its derivative is 0 there, as autograd's clamp); extra block 1: d log f / d f̃
// (σ(−f̃) for the sigmoid forget gate, 1 for exp). Backward is the true gradient through m, line by line as
// gatedrnn/reference/slstm.py `slstm_backward`.
template <typename T, bool kExpForget>
struct SLSTMCell {
  static constexpr int kGates = 4, kExtra = 2, kRecBias = 0, kAux = 0, kStateBlocks = 3;
  static constexpr bool kHasC = true, kSplitGrad = false, kSavesGates = true, kDirectDh = false, kReadsHNext = false,
                        kOwnsBiasGrad = false;
  static constexpr bool kCandidate = false;

  // Unswitched like the others; with `if (a.save)` / `if (extra)` in the loop GCC 12 also died with an internal
  // error (const_vector_mask_from_tree) once -fno-trapping-math let it vectorise the loop.
  static void forward(int H, int units, const RowForward<T>& a) {
    with_row_flags(a.save, a.extra != nullptr,
                   [&]<bool kSave, bool kExtraOut>() { pass<kSave, kExtraOut>(H, units, a); });
  }

  template <bool kSave, bool kExtraOut>
  static void pass(int H, int units, const RowForward<T>& a) {
    T* __restrict__ pre = a.gates;
    const T* __restrict__ rec = a.rec;
    const T* __restrict__ bias = a.bias;
    T* __restrict__ state = a.c;  // [c | n | m], in: previous, out: next
    T* __restrict__ h = a.h_next;
    T* __restrict__ extra = a.extra;
#pragma GCC ivdep
    for (int j = 0; j < units; ++j) {
      const T i_tilde = pre[j] + rec[j] + bias[j];
      const T f_tilde = pre[H + j] + rec[H + j] + bias[H + j];
      const T z = tanh_(pre[2 * H + j] + rec[2 * H + j] + bias[2 * H + j]);
      const T o = sigmoid(pre[3 * H + j] + rec[3 * H + j] + bias[3 * H + j]);
      const T log_f = kExpForget ? f_tilde : log_sigmoid(f_tilde);
      const T c = state[j], n = state[H + j], m = state[2 * H + j];
      const T log_f_plus_m = log_f + m;
      const bool take_input = (n == T(0)) | (i_tilde >= log_f_plus_m);  // m_next = ĩ (no history yet, or ĩ wins)
      const T m_next = take_input ? i_tilde : log_f_plus_m;
      const T i = exp_(i_tilde - m_next);
      const T f_exponent = log_f_plus_m - m_next;
      const T f = exp_(std::min(f_exponent, T(0)));
      const T c_next = f * c + i * z;
      const T n_next = f * n + i;
      if constexpr (kSave) pre[j] = i, pre[H + j] = f, pre[2 * H + j] = z, pre[3 * H + j] = o;
      if constexpr (kExtraOut) {
        extra[j] = take_input ? (f_exponent > T(0) ? T(2) : T(1)) : T(0);
        extra[H + j] = kExpForget ? T(1) : sigmoid(-f_tilde);  // d logsigmoid(f̃) / d f̃ = 1 − σ(f̃)
      }
      state[j] = c_next, state[H + j] = n_next, state[2 * H + j] = m_next;
      h[j] = o * c_next / n_next;
    }
  }

  static void backward(int H, const RowBackward<T>& a) {
    const T* __restrict__ gate = a.gates;
    const T* __restrict__ extra = a.extra;
    const T* __restrict__ state = a.c;        // [c_t | n_t | m_t]
    const T* __restrict__ prev = a.c_prev;    // [c | n | m] of the previous step
    const T* __restrict__ dh = a.dh;
    T* __restrict__ d_state = a.dc;           // in: [dc_next | dn_next | dm_next], out: the previous step's
    T* __restrict__ dG = a.dgate_x;
#pragma GCC ivdep
    for (int j = 0; j < H; ++j) {
      const T i = gate[j], f = gate[H + j], z = gate[2 * H + j], o = gate[3 * H + j];
      const T take = extra[j], dlog_f = extra[H + j];
      const T c_t = state[j], n_t = state[H + j];
      // h_t = o ⊙ c_t / n_t
      const T do_ = dh[j] * c_t / n_t;
      const T dc = d_state[j] + dh[j] * o / n_t;
      const T dn = d_state[H + j] - dh[j] * o * c_t / (n_t * n_t);
      // c_t = f ⊙ c + i ⊙ z;  n_t = f ⊙ n + i
      const T df = dc * prev[j] + dn * prev[H + j];
      const T di = dc * z + dn;
      const T dz = dc * i;
      // i = exp(ĩ − m_t);  f = exp(min(log_f + m − m_t, 0))   (exp' = exp; the min passes nothing where it clamps)
      const T df_exponent = take == T(2) ? T(0) : df * f;
      const T dm_t = d_state[2 * H + j] - di * i - df_exponent;
      // m_t = ĩ if take_input else log_f + m
      const T di_tilde = di * i + (take != T(0) ? dm_t : T(0));
      const T dlog_f_plus_m = df_exponent + (take != T(0) ? T(0) : dm_t);
      d_state[j] = dc * f;
      d_state[H + j] = dn * f;
      d_state[2 * H + j] = dlog_f_plus_m;  // log_f + m: dm = dlog_f_plus_m
      dG[j] = di_tilde;
      dG[H + j] = dlog_f_plus_m * dlog_f;  // log_f = logsigmoid(f̃) or f̃
      dG[2 * H + j] = dz * (T(1) - z * z);  // z = tanh(z̃), o = σ(õ)
      dG[3 * H + j] = do_ * o * (T(1) - o);
    }
  }
};

}  // namespace gatedrnn
