// The rows moe_comm_bench measures and moe_comm_model fits, and their CSV form: one header
// line naming the columns (SweepCsvColumnNames, in that order), then one line per sweep point.
// The reader maps columns by the header's names, so a file with the same names in another order
// reads back; every field is parsed in full, and a bad line is an error naming file, line and
// field. The optional columns (skew_us, transfer_us) may be missing; every other one must be there.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct SweepRow {
  std::string dispatcher = "flat";
  int64_t tokens = 0;           // tokens per rank per step
  int dim = 0, hidden = 0, experts = 0, top_k = 0;
  double capacity = 0;          // capacity factor
  int ep = 0;                   // expert-parallel group size
  int ranks_per_node = 0;       // ranks per node of the run's layout
  int nodes = 0;                // nodes of the run's layout
  int64_t bytes = 0;            // bytes one rank sends in one exchange (its own block included)
  double exchange_us = 0;       // time per exchange, mean over ranks, iterations and the 4 phases
  // exchange_us split as the run's profile splits it (launcher/a2a_profile.h): waiting for the
  // last rank of the EP group to arrive, and the rest (the data moving). -1: not measured (a CSV
  // written before these columns existed, which the reader still accepts).
  double skew_us = -1, transfer_us = -1;
  double algbw_gbs = 0;         // bytes / exchange time, GB/s (1e9)
  double busbw_gbs = 0;         // algbw * (ep - 1) / ep
  double a2a_ms = 0;            // the 4 exchanges of one forward+backward, ms
  double layer_ms = 0;          // the layer's forward+backward, ms
  double share = 0;             // a2a_ms / layer_ms
};

// The column names, in the order the writer puts them.
std::vector<std::string> SweepCsvColumnNames();

// The header line and one row's line, each ending in '\n'.
std::string SweepCsvHeader();
std::string SweepCsvLine(const SweepRow& row);
// Header plus rows; on failure *error is "PATH: <step> failed: <reason>".
bool WriteSweepCsv(const std::string& path, const std::vector<SweepRow>& rows, std::string* error);
// Parses `text` (as read from `path`, which only names it in errors). On failure *error is
// "PATH:LINE: <what>", naming the field and its value where one is at fault.
bool ParseSweepCsv(const std::string& path, const std::string& text, std::vector<SweepRow>* rows,
                   std::string* error);
// Reads and parses `path`, appending to *rows.
bool ReadSweepCsv(const std::string& path, std::vector<SweepRow>* rows, std::string* error);

}  // namespace moe
