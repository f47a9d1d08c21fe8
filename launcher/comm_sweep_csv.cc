#include "launcher/comm_sweep_csv.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "launcher/output_files.h"

namespace moe {

namespace {

// One column: its name and the one member it reads or writes.
struct Column {
  const char* name;
  std::string SweepRow::*text = nullptr;
  int64_t SweepRow::*big = nullptr;
  int SweepRow::*small = nullptr;
  double SweepRow::*real = nullptr;
  bool optional = false;  // a header without it reads, the member keeping its default
};

const Column kColumns[] = {
    {"dispatcher", &SweepRow::dispatcher},
    {"tokens", nullptr, &SweepRow::tokens},
    {"dim", nullptr, nullptr, &SweepRow::dim},
    {"hidden", nullptr, nullptr, &SweepRow::hidden},
    {"experts", nullptr, nullptr, &SweepRow::experts},
    {"top_k", nullptr, nullptr, &SweepRow::top_k},
    {"capacity", nullptr, nullptr, nullptr, &SweepRow::capacity},
    {"ep", nullptr, nullptr, &SweepRow::ep},
    {"ranks_per_node", nullptr, nullptr, &SweepRow::ranks_per_node},
    {"nodes", nullptr, nullptr, &SweepRow::nodes},
    {"bytes", nullptr, &SweepRow::bytes},
    {"exchange_us", nullptr, nullptr, nullptr, &SweepRow::exchange_us},
    {"skew_us", nullptr, nullptr, nullptr, &SweepRow::skew_us, /*optional=*/true},
    {"transfer_us", nullptr, nullptr, nullptr, &SweepRow::transfer_us, /*optional=*/true},
    {"algbw_gbs", nullptr, nullptr, nullptr, &SweepRow::algbw_gbs},
    {"busbw_gbs", nullptr, nullptr, nullptr, &SweepRow::busbw_gbs},
    {"a2a_ms", nullptr, nullptr, nullptr, &SweepRow::a2a_ms},
    {"layer_ms", nullptr, nullptr, nullptr, &SweepRow::layer_ms},
    {"share", nullptr, nullptr, nullptr, &SweepRow::share},
};

std::string FormatField(const Column& c, const SweepRow& row) {
  char buf[64];
  if (c.text) return row.*c.text;
  if (c.big) snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(row.*c.big));
  if (c.small) snprintf(buf, sizeof(buf), "%d", row.*c.small);
  if (c.real) snprintf(buf, sizeof(buf), "%.9g", row.*c.real);
  return buf;
}

// Whole-field parse into the column's member; false if `value` is not entirely a number of the
// column's kind (or, for text, is empty).
bool ParseField(const Column& c, const std::string& value, SweepRow* row) {
  if (value.empty()) return false;
  if (c.text) {
    row->*c.text = value;
    return true;
  }
  char* end = nullptr;
  errno = 0;
  if (c.real) {
    const double v = strtod(value.c_str(), &end);
    if (errno != 0 || *end != '\0' || !std::isfinite(v)) return false;
    row->*c.real = v;
    return true;
  }
  const long long v = strtoll(value.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  if (c.small && (v < -2147483647LL || v > 2147483647LL)) return false;
  if (c.big) row->*c.big = v;
  if (c.small) row->*c.small = static_cast<int>(v);
  return true;
}

std::vector<std::string> SplitCommas(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  if (!line.empty() && line.back() == ',') out.push_back("");
  return out;
}

// Maps the header's names to kColumns (-1: an optional column the header lacks); every other
// known column must be there, and no name twice.
bool MapHeader(const std::string& path, const std::string& header, std::vector<int>* index,
               std::string* error) {
  const std::vector<std::string> names = SplitCommas(header);
  std::map<std::string, int> where;
  for (size_t i = 0; i < names.size(); ++i) {
    if (where.count(names[i])) {
      *error = path + ":1: column '" + names[i] + "' appears twice";
      return false;
    }
    where[names[i]] = static_cast<int>(i);
  }
  index->clear();
  for (const Column& c : kColumns) {
    auto it = where.find(c.name);
    if (it == where.end() && c.optional) {
      index->push_back(-1);
      continue;
    }
    if (it == where.end()) {
      *error = path + ":1: header lacks column '" + c.name + "'";
      return false;
    }
    index->push_back(it->second);
  }
  return true;
}

}  // namespace

std::vector<std::string> SweepCsvColumnNames() {
  std::vector<std::string> names;
  for (const Column& c : kColumns) names.push_back(c.name);
  return names;
}

std::string SweepCsvHeader() {
  std::string s;
  for (const Column& c : kColumns) s += std::string(s.empty() ? "" : ",") + c.name;
  return s + "\n";
}

std::string SweepCsvLine(const SweepRow& row) {
  std::string s;
  bool first = true;
  for (const Column& c : kColumns) {
    s += (first ? "" : ",") + FormatField(c, row);
    first = false;
  }
  return s + "\n";
}

bool WriteSweepCsv(const std::string& path, const std::vector<SweepRow>& rows,
                   std::string* error) {
  std::string text = SweepCsvHeader();
  for (const SweepRow& r : rows) text += SweepCsvLine(r);
  return WriteWholeFile(path, text, error);
}

bool ParseSweepCsv(const std::string& path, const std::string& text, std::vector<SweepRow>* rows,
                   std::string* error) {
  std::stringstream in(text);
  std::string line;
  if (!std::getline(in, line)) {
    *error = path + ":1: empty file (want the header line)";
    return false;
  }
  std::vector<int> index;
  if (!MapHeader(path, line, &index, error)) return false;
  const size_t width = SplitCommas(line).size();
  for (int n = 2; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const std::vector<std::string> fields = SplitCommas(line);
    const std::string where = path + ":" + std::to_string(n) + ": ";
    if (fields.size() != width) {
      *error = where + std::to_string(fields.size()) + " fields, the header has " +
               std::to_string(width);
      return false;
    }
    SweepRow row;
    for (size_t c = 0; c < index.size(); ++c) {
      if (index[c] < 0) continue;
      const std::string& value = fields[index[c]];
      if (!ParseField(kColumns[c], value, &row)) {
        *error = where + "field '" + kColumns[c].name + "': bad value '" + value + "'";
        return false;
      }
    }
    rows->push_back(row);
  }
  return true;
}

bool ReadSweepCsv(const std::string& path, std::vector<SweepRow>* rows, std::string* error) {
  std::ifstream f(path);
  if (!f) {
    *error = path + ": cannot open for reading";
    return false;
  }
  std::stringstream buf;
  buf << f.rdbuf();
  if (f.bad()) {
    *error = path + ": read failed";
    return false;
  }
  return ParseSweepCsv(path, buf.str(), rows, error);
}

}  // namespace moe
