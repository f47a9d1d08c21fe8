// The source half of kernel_resources_check: in every .cu file of the given folders, each
// __global__ kernel declares __launch_bounds__, and each launch `K<<<grid, block, ...>>>` writes
// `block` as the same expression K's bound names. The bound then IS the launch: the register
// and shared-memory limits the cubin check applies to the bound hold for every launch.
// (A launch whose block differs from the bound, e.g. a literal 512 for a bound kThreads = 256,
// fails at run time with cudaErrorInvalidConfiguration at best; here it fails at build time.)
#include <dirent.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Comments and string literals removed, whitespace runs collapsed to one space.
std::string Normalised(const std::string& src) {
  std::string out;
  for (size_t i = 0; i < src.size(); ++i) {
    if (src.compare(i, 2, "//") == 0) {
      while (i < src.size() && src[i] != '\n') ++i;
    } else if (src.compare(i, 2, "/*") == 0) {
      const size_t e = src.find("*/", i + 2);
      i = e == std::string::npos ? src.size() : e + 1;
    } else if (src[i] == '"') {
      for (++i; i < src.size() && src[i] != '"'; ++i)
        if (src[i] == '\\') ++i;
      out += "\"\"";
      continue;
    }
    if (i >= src.size()) break;
    const char c = std::isspace(static_cast<unsigned char>(src[i])) ? ' ' : src[i];
    if (c != ' ' || (!out.empty() && out.back() != ' ')) out += c;
  }
  return out;
}

std::string Trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && s[b] == ' ') ++b;
  while (e > b && s[e - 1] == ' ') --e;
  return s.substr(b, e - b);
}

bool IsIdent(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Arguments between s[open] == '(' (or the start of a <<< >>> list) and the matching close,
// split at top-level commas; *end gets the position after the close.
std::vector<std::string> Args(const std::string& s, size_t begin, const std::string& close,
                              size_t* end) {
  std::vector<std::string> args(1);
  int depth = 0;
  for (size_t i = begin; i < s.size(); ++i) {
    if (depth == 0 && s.compare(i, close.size(), close) == 0) {
      *end = i + close.size();
      for (std::string& a : args) a = Trim(a);
      return args;
    }
    const char c = s[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (c == ',' && depth == 0) {
      args.emplace_back();
    } else {
      args.back() += c;
    }
  }
  *end = s.size();
  return {};
}

// kernel name -> its bound expression ("" when it has none), for every __global__ in s.
void Declarations(const std::string& s, std::map<std::string, std::string>* bounds) {
  const std::string g = "__global__ void ", lb = "__launch_bounds__(";
  for (size_t p = s.find(g); p != std::string::npos; p = s.find(g, p + 1)) {
    size_t q = p + g.size();
    std::string bound;
    if (s.compare(q, lb.size(), lb) == 0) {
      const std::vector<std::string> a = Args(s, q + lb.size(), ")", &q);
      if (!a.empty()) bound = a[0];
      while (q < s.size() && s[q] == ' ') ++q;
    }
    size_t e = q;
    while (e < s.size() && IsIdent(s[e])) ++e;
    if (e > q) (*bounds)[s.substr(q, e - q)] = bound;
  }
}

struct Launch {
  std::string file, kernel, block;
};

// Every `Name<...><<<a, b, ...>>>` in s.
void Launches(const std::string& file, const std::string& s, std::vector<Launch>* out) {
  for (size_t p = s.find("<<<"); p != std::string::npos; p = s.find("<<<", p + 3)) {
    size_t b = p;
    while (b > 0 && s[b - 1] == ' ') --b;
    if (b > 0 && s[b - 1] == '>') {  // template arguments: back to the matching '<'
      int depth = 0;
      do {
        --b;
        if (s[b] == '>') ++depth;
        if (s[b] == '<') --depth;
      } while (b > 0 && depth > 0);
      while (b > 0 && s[b - 1] == ' ') --b;
    }
    size_t a = b;
    while (a > 0 && IsIdent(s[a - 1])) --a;
    size_t end = 0;
    const std::vector<std::string> args = Args(s, p + 3, ">>>", &end);
    out->push_back({file, s.substr(a, b - a), args.size() >= 2 ? args[1] : "?"});
  }
}

// A block written dim3(a, b[, c]) as the bound would name its thread count: "a * b[ * c]".
std::string BlockThreads(const std::string& block) {
  const std::string d = "dim3(";
  if (block.compare(0, d.size(), d) != 0 || block.back() != ')') return block;
  size_t end = 0;
  const std::vector<std::string> dims = Args(block, d.size(), ")", &end);
  if (end != block.size()) return block;
  std::string out;
  for (const std::string& x : dims) out += (out.empty() ? "" : " * ") + x;
  return out;
}

std::vector<std::string> CuFiles(const std::string& dir) {
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 3 && n.compare(n.size() - 3, 3, ".cu") == 0) files.push_back(dir + "/" + n);
    }
    closedir(d);
  }
  return files;
}

}  // namespace

int CheckSources(const std::vector<std::string>& dirs) {
  // Kernels live in anonymous namespaces, so two files may use one name: a launch resolves to
  // its own file's kernel.
  std::map<std::string, std::map<std::string, std::string>> bounds;  // file -> kernel -> bound
  std::vector<Launch> launches;
  int files = 0, bad = 0;
  size_t kernels = 0;
  for (const std::string& dir : dirs)
    for (const std::string& f : CuFiles(dir)) {
      const std::string s = Normalised(ReadAll(f));
      Declarations(s, &bounds[f]);
      Launches(f, s, &launches);
      ++files;
    }
  for (const auto& file : bounds)
    for (const auto& kv : file.second) {
      ++kernels;
      if (!kv.second.empty()) continue;
      std::printf("FAIL  source: %s: kernel %s has no __launch_bounds__\n", file.first.c_str(),
                  kv.first.c_str());
      ++bad;
    }
  for (const Launch& l : launches) {
    const std::map<std::string, std::string>& mine = bounds[l.file];
    auto it = mine.find(l.kernel);
    if (it == mine.end()) {
      std::printf("FAIL  source: %s launches %s, not a __global__ of that file\n",
                  l.file.c_str(), l.kernel.c_str());
      ++bad;
    } else if (!it->second.empty() && it->second != BlockThreads(l.block)) {
      std::printf("FAIL  source: %s launches %s with block '%s', its __launch_bounds__ is '%s'\n",
                  l.file.c_str(), l.kernel.c_str(), l.block.c_str(), it->second.c_str());
      ++bad;
    }
  }
  if (!dirs.empty())
    std::printf("sources: %d .cu files, %zu kernels, %zu launches checked\n", files, kernels,
                launches.size());
  return bad;
}
