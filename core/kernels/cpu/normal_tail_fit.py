#!/usr/bin/python3
"""Fits and checks the rational approximation behind core/kernels/cpu/gelu.cc's normal tail.

Development tool (needs python3-numpy and python3-scipy; the build does not run it).

gelu.cc computes the upper tail Q(z) = 1 - Phi(z) for 0 <= z <= 12 from the Mills ratio
M(z) = Q(z) / phi(z) as M = 1 / (z + c(z)), where c(z) = 1 / M(z) - z falls smoothly from
sqrt(2 / pi) at 0 to about 1 / z. This script
  1. fits c ~= P(z) / R(z) (degrees 4 and 5, R(0) = 1) for least maximum relative error on
     [0, 12] by Lawson's iteratively reweighted least squares on the linearised residual
     P - c R, and prints the constants in the form gelu.cc declares them;
  2. rounds them to float and reports, in units of u = 2^-24,
     - the fit's own error in M (exact arithmetic, float constants),
     - the error of M evaluated as gelu.cc does it, R / (z R + P) in float with every
       Horner step and z R + P one fused multiply-add and the divide rounded once, over 600,000
       points (a fused step is emulated in double: the product is exact there, the sum rounds to
       double and then to float, which can differ from one rounding only in rare ties).
The tests derive their bounds from the second figure (tests/unit/gelu_kernels_test.cc).

Usage: /usr/bin/python3 core/kernels/cpu/normal_tail_fit.py
"""

import numpy as np
from scipy.special import erfcx

P_DEGREE, R_DEGREE = 4, 5
Z_MAX = 12.0
U = 2.0 ** -24


def mills_ratio(z):
    """M(z) = Q(z) / phi(z) = sqrt(pi / 2) erfcx(z / sqrt 2), accurate in double."""
    return np.sqrt(np.pi / 2) * erfcx(z / np.sqrt(2.0))


def c_of(z):
    return 1.0 / mills_ratio(z) - z


def fit(z, c, iterations=60):
    """Minimax-relative P / R by Lawson weights on |P - c R| / |c R|."""
    weights = np.ones_like(z)
    r_values = np.ones_like(z)
    for _ in range(iterations):
        # Unknowns: p_0..p_4, r_1..r_5. Residual P(z) - c R(z), R's constant term fixed at 1,
        # scaled by the last R so that it measures the relative error of c.
        scale = np.sqrt(weights) / (c * r_values)
        columns = [z ** k for k in range(P_DEGREE + 1)]
        columns += [-c * z ** k for k in range(1, R_DEGREE + 1)]
        a = np.stack(columns, axis=1) * scale[:, None]
        b = c * scale
        solution, *_ = np.linalg.lstsq(a, b, rcond=None)
        p = solution[:P_DEGREE + 1]
        r = np.concatenate([[1.0], solution[P_DEGREE + 1:]])
        r_values = np.polyval(r[::-1], z)
        error = np.abs(np.polyval(p[::-1], z) / r_values - c) / c
        weights = weights * error
        weights /= weights.sum()
    return p, r


def fused_multiply_add(a, b, c):
    """a * b + c for float32 arrays, rounded to float32 once (see the docstring on ties)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def float_mills_ratio(z32, p32, r32):
    """R / (z R + P) in float32 as gelu.cc evaluates it: fused Horner steps, a fused z R + P."""
    p = np.full_like(z32, p32[P_DEGREE])
    for k in range(P_DEGREE - 1, -1, -1):
        p = fused_multiply_add(p, z32, np.float32(p32[k]))
    r = np.full_like(z32, r32[R_DEGREE])
    for k in range(R_DEGREE - 1, -1, -1):
        r = fused_multiply_add(r, z32, np.float32(r32[k]))
    return r / fused_multiply_add(z32, r, p)


def main():
    fit_points = np.linspace(0.0, Z_MAX, 20001)
    p, r = fit(fit_points, c_of(fit_points))
    p32, r32 = p.astype(np.float32), r.astype(np.float32)

    print("constexpr float " + ", ".join(
        f"kP{k} = {float(v):.9e}f" for k, v in enumerate(p32)) + ";")
    print("constexpr float " + ", ".join(
        f"kR{k} = {float(v):.9e}f" for k, v in enumerate(r32) if k > 0) + ";")

    # Check on float inputs only (those are what gelu.cc sees), over the whole range.
    z32 = np.linspace(0.0, Z_MAX, 600001).astype(np.float32)
    z = z32.astype(np.float64)
    exact = mills_ratio(z)
    c_fit = (np.polyval(p32.astype(np.float64)[::-1], z)
             / np.polyval(r32.astype(np.float64)[::-1], z))
    fit_error = np.abs(1.0 / (z + c_fit) - exact) / exact / U
    with np.errstate(over="ignore"):
        evaluated = float_mills_ratio(z32, p32, r32).astype(np.float64)
    float_error = np.abs(evaluated - exact) / exact / U
    print(f"fit error in M (exact arithmetic): max {fit_error.max():.3f} u")
    print(f"float evaluation of M: max {float_error.max():.3f} u, mean {float_error.mean():.3f} u "
          f"(u = 2^-24, {z32.size} points on [0, {Z_MAX:g}])")


if __name__ == "__main__":
    main()
