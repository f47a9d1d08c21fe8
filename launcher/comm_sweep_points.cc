#include "launcher/comm_sweep_points.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace moe {

namespace {

std::vector<std::string> Items(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  if (text.empty() || text.back() == ',') out.push_back("");
  return out;
}

std::string Bad(const std::string& flag, const std::string& text, const std::string& item,
                const char* want) {
  return "--" + flag + "=" + text + ": bad value '" + item + "' (want " + want + ")";
}

}  // namespace

bool ParseIntList(const std::string& flag, const std::string& text, std::vector<int64_t>* out,
                  std::string* error) {
  out->clear();
  for (const std::string& item : Items(text)) {
    char* end = nullptr;
    errno = 0;
    const long long v = item.empty() ? 0 : strtoll(item.c_str(), &end, 10);
    if (item.empty() || errno != 0 || *end != '\0' || v < 1) {
      *error = Bad(flag, text, item, "positive integers, comma-separated");
      return false;
    }
    out->push_back(v);
  }
  return true;
}

bool ParseRealList(const std::string& flag, const std::string& text, std::vector<double>* out,
                   std::string* error) {
  out->clear();
  for (const std::string& item : Items(text)) {
    char* end = nullptr;
    errno = 0;
    const double v = item.empty() ? 0 : strtod(item.c_str(), &end);
    if (item.empty() || errno != 0 || *end != '\0' || !std::isfinite(v) || v <= 0) {
      *error = Bad(flag, text, item, "positive numbers, comma-separated");
      return false;
    }
    out->push_back(v);
  }
  return true;
}

bool ParseDispatcherList(const std::string& flag, const std::string& text,
                         std::vector<DispatcherKind>* out, std::string* error) {
  const DispatcherKind kinds[] = {DispatcherKind::kFlat, DispatcherKind::kHierarchical,
                                  DispatcherKind::kPipelined};
  out->clear();
  for (const std::string& item : Items(text)) {
    const DispatcherKind* k = std::find_if(std::begin(kinds), std::end(kinds),
        [&](DispatcherKind d) { return item == DispatcherKindName(d); });
    if (k == std::end(kinds)) {
      *error = Bad(flag, text, item, "flat, hierarchical or pipelined");
      return false;
    }
    out->push_back(*k);
  }
  return true;
}

std::vector<SweepPoint> ExpandSweep(const SweepLists& l, int world,
                                    std::vector<std::string>* skipped) {
  std::vector<SweepPoint> points;
  for (DispatcherKind d : l.dispatchers)
    for (int64_t ep : l.ep)
      for (int64_t e : l.experts)
        for (int64_t k : l.top_k)
          for (double cf : l.capacity)
            for (int64_t dim : l.dims)
              for (int64_t t : l.tokens) {
                SweepPoint p;
                p.dispatcher = d;
                p.tokens = t;
                p.group_tokens = std::min(t, l.group_tokens);
                p.dim = static_cast<int>(dim);
                p.hidden = static_cast<int>(dim * l.hidden_ratio);
                p.experts = static_cast<int>(e);
                p.top_k = static_cast<int>(k);
                p.ep = static_cast<int>(ep);
                p.capacity = cf;
                std::string why;
                if (world % ep != 0) why = "ep does not divide the " + std::to_string(world) +
                                           " ranks";
                else if (e % ep != 0) why = "ep does not divide the experts";
                else if (k > e) why = "top_k exceeds the experts";
                else if (t % p.group_tokens != 0) why = "tokens not a multiple of the group";
                if (why.empty()) {
                  points.push_back(p);
                } else {
                  skipped->push_back("skip ep=" + std::to_string(ep) + " E=" + std::to_string(e) +
                                     " k=" + std::to_string(k) + " tokens=" + std::to_string(t) +
                                     ": " + why);
                }
              }
  return points;
}

}  // namespace moe
