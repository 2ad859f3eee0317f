// Branch-free sigmoid / tanh that GCC auto-vectorises (-O3) inside the cells' pointwise loops.
// float: Cephes-style exp (range reduction + degree-6 polynomial, ~2 ulp) and Cephes tanhf's odd
// polynomial near 0 (avoids the cancellation of 1 - 2/(e^{2x}+1)); double: libm, for exactness in tests.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace gatedrnn {

// Always inlined: a call left in a pointwise loop (GCC's inliner gives up once a unit holds many cell passes)
// keeps the whole loop scalar ("statement clobbers memory").
#define GATEDRNN_MATH inline __attribute__((always_inline))

GATEDRNN_MATH float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // x = n ln2 + r, |r| <= ln2/2; n rounded with the 1.5 * 2^23 trick (std::floor blocks vectorisation)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * std::bit_cast<float>(bits);
}

// 1 / d for d in [1, 2e38] (the denominators 1 + e^x below), without a divide: vdivps on Intel's 512-bit vectors
// has a throughput of ~10 cycles, and five of them per unit made the division most of an LSTM's pointwise pass. A
// bit-level first guess (relative error < 12.5%) and three Newton steps r ← r (2 − d r), each squaring the error,
// the last on the exact residual: within 1 ulp of 1 / d. Vectorises (an integer subtract and FMAs).
GATEDRNN_MATH float reciprocal_newton(float d) {
  d = std::min(d, 1e38f);  // keeps the guess's exponent in range (d ≤ e^88 + 1 here anyway)
  float r = std::bit_cast<float>(0x7EF311C3 - std::bit_cast<int32_t>(d));
  r = r * (2.0f - d * r);
  r = r * (2.0f - d * r);
  // the last step on the exact residual (FMA): 1 / 1 is exactly 1, so a gate saturated by an infinite input is
  // exactly 1 with derivative 0, and its weight gradient 0 * inf = NaN, as in torch.nn
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(r, std::fma(-d, r, 1.0f), r);
#else  // no FMA instruction (the SSE2 baseline build): std::fma would be a libm call; 1 - 1 * r is exact anyway
  return r + r * (1.0f - d * r);
#endif
}

// The cells' 1 / d: reciprocal_newton where vectors are 512 bits wide and on other architectures; x86 without
// AVX-512 (AVX2, SSE) divides: there vdivps issues every ~3.5-5 cycles on a unit of its own (Zen 3, Skylake;
// Haswell's 256-bit divide takes ~14, not measured), beside the FMA pipes, and an LSTM's pointwise pass ran 1.4x
// faster with it on a Zen 3 (benchmarks/micro/pointwise.cpp). AMD CPUs divide at every level
// (GATEDRNN_RECIPROCAL_DIVIDE, from _flags.py): a Zen 4's 512-bit divide issues every ~5 cycles. 1 / d is
// correctly rounded, so no less exact, and 1 / 1 is 1 either way.
#if (defined(__x86_64__) || defined(__i386__)) && (!defined(__AVX512F__) || defined(GATEDRNN_RECIPROCAL_DIVIDE))
inline constexpr bool kReciprocalDivides = true;
#else
inline constexpr bool kReciprocalDivides = false;
#endif

GATEDRNN_MATH float reciprocal(float d) {
  if constexpr (kReciprocalDivides) return 1.0f / d;
  else return reciprocal_newton(d);
}

// Below -88 exp_approx(-x) saturates at e^88 and 1/(1+e^88) would be a tiny non-zero number; torch.nn's
// sigmoid reaches exactly 0 there (e^-x overflows to inf), so that a gate saturated by an infinite input
// has a zero derivative and the weight gradient is 0 * inf = NaN, as in torch.nn (not +-inf).
GATEDRNN_MATH float sigmoid(float x) {
  const float s = reciprocal(1.0f + exp_approx(-x));
  return x < -88.0f ? 0.0f : s;
}

GATEDRNN_MATH float tanh_(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  float small = -5.70498872745e-3f;  // Cephes tanhf, |x| < 0.625
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  const float large = 1.0f - 2.0f * reciprocal(exp_approx(2.0f * ax) + 1.0f);
  return ax < 0.625f ? small : std::copysign(large, x);
}

GATEDRNN_MATH double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
GATEDRNN_MATH double tanh_(double x) { return std::tanh(x); }

// exp for the sLSTM's stabilised gates (arguments <= 0 but at a first step)
GATEDRNN_MATH float exp_(float x) { return exp_approx(x); }
GATEDRNN_MATH double exp_(double x) { return std::exp(x); }

// log(1 + u) for u in [0, 1] (Cephes logf's polynomial: 1 + u = m 2^e with m in [√½, √2), e in {0, 1}, a degree-9
// polynomial in m − 1, 1-3 ulp); no bit manipulation, so GCC vectorises it inside a loop together with exp_approx
GATEDRNN_MATH float log1p_unit(float u) {
  const float e = u > 0.41421356237f ? 1.0f : 0.0f;
  const float r = (1.0f + u) * (1.0f - 0.5f * e) - 1.0f, z = r * r;
  float y = 7.0376836292e-2f;
  y = y * r - 1.1514610310e-1f;
  y = y * r + 1.1676998740e-1f;
  y = y * r - 1.2420140846e-1f;
  y = y * r + 1.4249322787e-1f;
  y = y * r - 1.6668057665e-1f;
  y = y * r + 2.0000714765e-1f;
  y = y * r - 2.4999993993e-1f;
  y = y * r + 3.3333331174e-1f;
  y = y * r * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return r + y + e * 0.693359375f;
}

// log σ(x) = min(x, 0) − log(1 + exp(−|x|)), finite for every x (torch's logsigmoid)
GATEDRNN_MATH float log_sigmoid(float x) { return (x < 0.0f ? x : 0.0f) - log1p_unit(exp_approx(-std::fabs(x))); }
GATEDRNN_MATH double log_sigmoid(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::abs(x))); }

}  // namespace gatedrnn
