// FormatAllToAllTable (launcher/a2a_profile.h): the table and the notes that say how to read it.
#include <algorithm>
#include <cstdio>
#include <string>

#include "launcher/a2a_profile.h"

namespace moe {
namespace {

std::string Cell(double v, int width) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%*.3f", width, v);
  return buf;
}

std::string Padded(const std::string& s, int width) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%*s", width, s.c_str());
  return buf;
}

std::string Notes(const AllToAllProfile& p) {
  char buf[1024];
  std::string out;
  std::snprintf(buf, sizeof(buf),
                "algbw = bytes one rank sends / phase time; busbw = algbw * (n-1)/n, n = %d "
                "(EP group size),\nas nccl-tests reports all-to-all. skew = last arrival in the "
                "EP group - own arrival;\ntransfer = own departure - last arrival (common clock, "
                "sync error <= %.1f us).\n",
                p.ep_size, p.max_clock_error_us);
  out += buf;
  if (p.straggler_rank >= 0) {
    std::snprintf(buf, sizeof(buf), "straggler: rank %d arrived last in %.0f%% of all-to-alls "
                  "(%lld analysed per rank).\n", p.straggler_rank, 100 * p.straggler_fraction,
                  static_cast<long long>(p.calls_per_rank));
    out += buf;
  }
  out += "Measuring costs two clock reads and 16 bytes per all-to-all (the last 4096 per phase "
         "kept),\none gather at the end, and 8 ping-pongs per rank with rank 0 at start-up.\n";
  return out;
}

}  // namespace

std::string FormatAllToAllTable(const AllToAllProfile& p) {
  const int name_w = 16, w = 10;
  const char* heads[] = {"MB/rank", "ms", "skew ms", "xfer ms", "device ms", "algbw GB/s",
                         "busbw GB/s"};
  std::string out = std::string("phase") + std::string(name_w - 5, ' ');
  for (const char* h : heads) out += " | " + Padded(h, w);
  out += "\n" + std::string(name_w, '-');
  for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); ++i) out += "-+-" + std::string(w, '-');
  out += "\n";
  for (const AllToAllRow& r : p.rows) {
    std::string name = r.phase;
    name.resize(std::max<size_t>(name.size(), name_w), ' ');
    out += name;
    for (double v : {r.bytes_per_rank / 1e6, r.ms, r.skew_ms, r.transfer_ms, r.device_ms,
                     r.algbw_gbs, r.busbw_gbs})
      out += " | " + Cell(v, w);
    out += "\n";
  }
  return out + Notes(p);
}

}  // namespace moe
