// Error bounds of the host normal tail and density (NormalTailAndPdf, core/kernels/cpu/gelu.cc)
// at a float argument z, against the true functions at that z, derived from gelu.cc's error
// budget (u = 2^-24, relative rounding of one float operation):
//   pdf  = (1 / sqrt(2 pi)) * exp(-0.5 (z z)): z z rounds (exp's argument moves by z^2 / 2 u),
//          the exp within 2 ulps (4u; gelu.cc's measured 0.94), the constant's own rounding u,
//          the product u, and u more for second-order terms and the double reference
//                                                                 -> (z^2 / 2 + 7) u relative;
//   Q(|z|) = pdf * M(|z|), M = R / (z R + P): M's float evaluation 2.9u measured at 600,000
//          points by core/kernels/cpu/normal_tail_fit.py (taken as 4u for the floats between
//          them) and the product phi R one more u                  -> (z^2 / 2 + 11) u relative;
//   z < 0: 1 - Q(|z|), whose subtraction rounds once more (u of the result).
// Beyond |z| = 12 both take their values at 12: absolute errors below Q(12) = 1.8e-33 and
// phi(12) = 5.4e-32 (kept as 2e-33 and 6e-32 with the values' own error).
#pragma once

#include <cmath>

namespace moe {
namespace normal_tail_bounds {

constexpr double kU = 5.9604644775390625e-08;  // 2^-24
constexpr double kTailCut = 12.0, kTailBeyondCut = 2e-33, kPdfBeyondCut = 6e-32;

inline double UpperTail(double z) { return 0.5 * std::erfc(z / std::sqrt(2.0)); }
inline double Pdf(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2 * M_PI); }

inline double PdfRelative(double z) { return (0.5 * z * z + 7) * kU; }
inline double UpperTailRelative(double z) { return (0.5 * z * z + 11) * kU; }

// |pdf(z) computed - phi(z)|.
inline double PdfAbsolute(double z) {
  return std::abs(z) > kTailCut ? kPdfBeyondCut : Pdf(z) * PdfRelative(z);
}

// |tail(z) computed - (1 - Phi(z))|, for either sign of z.
inline double TailAbsolute(double z) {
  if (std::abs(z) > kTailCut) return kTailBeyondCut;
  const double q = UpperTail(std::abs(z));
  return q * UpperTailRelative(z) + (z < 0 ? (1 - q) * kU : 0.0);
}

// |Phi(x) computed - Phi(x)| inside GELU, which takes Q(|x|) for x < 0 and 1 - Q(|x|) otherwise.
inline double CdfAbsolute(double x) { return TailAbsolute(-x); }

}  // namespace normal_tail_bounds
}  // namespace moe
