// moe_comm_bench's sweep: the flag lists it takes (comma-separated values), and the cross product
// of them as points, each one MoeLayer shape on one EP group size with one dispatcher.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/moe/token_dispatcher.h"

namespace moe {

// Every value of `text` (comma-separated) as a positive integer / positive number / dispatcher.
// On a bad value: false with *error "--FLAG=TEXT: bad value 'V' (want ...)".
bool ParseIntList(const std::string& flag, const std::string& text, std::vector<int64_t>* out,
                  std::string* error);
bool ParseRealList(const std::string& flag, const std::string& text, std::vector<double>* out,
                   std::string* error);
bool ParseDispatcherList(const std::string& flag, const std::string& text,
                         std::vector<DispatcherKind>* out, std::string* error);

struct SweepLists {
  std::vector<DispatcherKind> dispatchers;
  std::vector<int64_t> tokens, dims, experts, top_k, ep;
  std::vector<double> capacity;
  int hidden_ratio = 2;
  int64_t group_tokens = 256;  // at most; a point with fewer tokens routes them as one group
};

struct SweepPoint {
  DispatcherKind dispatcher = DispatcherKind::kFlat;
  int64_t tokens = 0, group_tokens = 0;
  int dim = 0, hidden = 0, experts = 0, top_k = 0, ep = 0;
  double capacity = 0;
};

// The points of the cross product that this world can run, in sweep order (dispatcher outermost,
// then ep, experts, top_k, capacity, dim, tokens); a point it cannot run goes to *skipped as one
// line saying why (ep not dividing the world or the experts, tokens not a multiple of the group).
std::vector<SweepPoint> ExpandSweep(const SweepLists& lists, int world,
                                    std::vector<std::string>* skipped);

}  // namespace moe
