// The host GELU kernels (core/kernels/cpu/gelu.h) in ns per element, on arrays sized like an
// expert block's hidden layer, with two references timed in the same run: a copy of the same
// number of floats (std::copy: what any pass over the array costs) and one multiply-add per
// element (the cheapest arithmetic a fused activation epilogue would do). Prints one table;
// compare kernels by their ratios in one run, not by ns across runs or machines.
//   gelu_bench --elements 16384,137216,1048576 --reps 5
#include <gflags/gflags.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/kernels/cpu/gelu.h"
#include "core/rng.h"
#include "launcher/comm_sweep_points.h"  // ParseIntList

DEFINE_string(elements, "16384,137216,1048576",
              "comma-separated array lengths (137,216 = vmoe_tiny's 1,072 expert rows x H 128)");
DEFINE_int32(reps, 5, "timed repetitions per kernel and length; the table shows the fastest");
DEFINE_double(min_seconds, 0.05, "each repetition runs the kernel until this much time has passed");

namespace moe {
namespace {

// Fastest of --reps repetitions, in ns per element.
double NsPerElement(int64_t n, const std::function<void()>& kernel) {
  using Clock = std::chrono::steady_clock;
  double best = 1e30;
  kernel();  // warm the caches and the dispatch
  for (int r = 0; r < FLAGS_reps; ++r) {
    int64_t calls = 0;
    const auto t0 = Clock::now();
    double elapsed = 0;
    do {
      kernel();
      ++calls;
      elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (elapsed < FLAGS_min_seconds);
    best = std::min(best, elapsed * 1e9 / static_cast<double>(calls * n));
  }
  return best;
}

void RunLength(int64_t n) {
  const CounterRng rng(7);
  std::vector<float> x(n), y(n), d(n), g(n), col_sum(128, 0.f);
  for (int64_t i = 0; i < n; ++i) x[i] = 1.5f * rng.Normal(i);  // pre-activations, all regimes
  for (int64_t i = 0; i < n; ++i) g[i] = rng.Normal(n + i);
  const int64_t cols = 128, rows = n / cols;  // ScaleWithColumnSums runs on whole rows

  const double copy = NsPerElement(n, [&] { std::copy(x.begin(), x.end(), y.begin()); });
  const double madd = NsPerElement(n, [&] {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * g[i] + d[i];
  });
  const double fwd = NsPerElement(n, [&] { GeluForward(x.data(), y.data(), n); });
  const double fwd_d = NsPerElement(
      n, [&] { GeluForwardWithDerivative(x.data(), y.data(), d.data(), n); });
  const double bwd = NsPerElement(n, [&] { GeluBackward(x.data(), g.data(), y.data(), n); });
  const double scale = rows == 0 ? 0.0 : NsPerElement(rows * cols, [&] {
    std::copy(g.begin(), g.begin() + rows * cols, y.begin());
    ScaleWithColumnSums(d.data(), y.data(), rows, cols, col_sum.data());
  });
  const double tail = NsPerElement(n, [&] { NormalTailAndPdf(x.data(), n, y.data(), d.data()); });
  const double baseline = NsPerElement(
      n, [&] { GeluForwardWithDerivativeSeparateRounding(x.data(), y.data(), d.data(), n); });

  std::printf("%10lld | %6.3f %6.3f | %7.3f %7.3f %7.3f %7.3f %7.3f | %7.3f | %6.2f %6.2f %6.2f\n",
              static_cast<long long>(n), copy, madd, fwd, fwd_d, bwd, scale, tail, baseline,
              fwd / copy, fwd_d / copy, tail / copy);
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::SetUsageMessage("ns per element of the host GELU kernels, with copy and multiply-add "
                          "references timed in the same run");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (FLAGS_reps < 1 || FLAGS_min_seconds <= 0) {
    std::fprintf(stderr, "gelu_bench: --reps must be >= 1 and --min_seconds > 0 (got %d, %g)\n",
                 FLAGS_reps, FLAGS_min_seconds);
    return 2;
  }
  std::vector<int64_t> lengths;
  std::string error;
  if (!moe::ParseIntList("elements", FLAGS_elements, &lengths, &error)) {
    std::fprintf(stderr, "gelu_bench: %s\n", error.c_str());
    return 2;
  }
  std::printf("# ns per element, fastest of %d repetitions; x ~ N(0, 1.5^2)\n", FLAGS_reps);
  std::printf("# copy: std::copy of n floats; madd: y = x * g + d; fwd: GeluForward; fwd+d: "
              "GeluForwardWithDerivative;\n# bwd: GeluBackward from x; scale: copy + "
              "ScaleWithColumnSums (the expert backward's product, rows of 128);\n# tail: "
              "NormalTailAndPdf (the load loss);\n# base: fwd+d as the baseline clone runs it "
              "(SSE2, multiply-adds rounded twice), for CPUs without FMA; ratios: over copy\n");
  std::printf("%10s | %6s %6s | %7s %7s %7s %7s %7s | %7s | %6s %6s %6s\n", "elements", "copy",
              "madd", "fwd", "fwd+d", "bwd", "scale", "tail", "base", "fwd/cp", "fwd+d/cp",
              "tail/cp");
  for (const int64_t n : lengths) moe::RunLength(n);
  return 0;
}
