// Build-time launchability check of every CUDA kernel we compile (no GPU needed).
//
// A kernel whose registers x threads per block exceed the SM's register file can never launch
// (cudaErrorLaunchOutOfResources at every call), and nothing short of a GPU run notices. This
// tool reads what ptxas decided, from the sm_90 cubins embedded in the built objects / static
// libraries, and fails the build check where a launch could not fit:
//   - every kernel must carry a __launch_bounds__ (its max threads per block is then recorded in
//     the cubin, and ptxas limits the registers to what that many threads can hold);
//   - registers per thread <= 255; registers per block, allocated per warp in units of 256,
//     <= 65536; static shared memory <= 48 KiB (dynamic shared memory is checked at the launch);
//   - in the sources (--sources DIR: every .cu file there), each launch's block size is written
//     as the very expression its kernel's __launch_bounds__ names, so the bound is the launch.
// No cuobjdump needed (this toolkit has none): the fatbin and cubin formats are read directly.
// cubin facts used: .nv.info holds EIATTR_REGCOUNT (0x2f) and EIATTR_FRAME_SIZE (0x11) records
// {symbol, value}; .nv.info.<kernel> holds EIATTR_MAX_THREADS (0x05) {x, y, z} when the kernel
// has a bound; .nv.shared.<kernel>'s size is the static shared memory.
//
// Usage: kernel_resources_check [--sources DIR]... FILE...   (FILE: .o, .a, .so or executable)
// Exit 0 when every kernel passes, 1 otherwise, 2 on a usage or read error.
#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxRegsPerThread = 255;
constexpr int kRegsPerBlock = 65536;
constexpr int kRegAllocUnit = 256;  // registers are allocated per warp in units of 256
constexpr int64_t kStaticSmemBytes = 48 * 1024;
// A kernel's .nv.shared section also counts the 1 KiB per block the driver reserves on sm_90
// (ptxas -v reports the section size minus it), so the static limit is checked with it added.
constexpr int64_t kReservedSmemBytes = 1024;
constexpr uint32_t kFatbinMagic = 0xBA55ED50u;
constexpr uint8_t kEiRegCount = 0x2f, kEiFrameSize = 0x11, kEiMaxThreads = 0x05;

struct Kernel {
  std::string name;
  int regs = -1;
  int64_t frame = 0, static_smem = 0;
  int max_threads = 0;  // 0: no __launch_bounds__
};

template <typename T>
T Load(const std::string& b, size_t off) {
  T v{};
  if (off + sizeof(T) <= b.size()) std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

std::string Demangle(const std::string& s) {
  int status = 0;
  char* d = abi::__cxa_demangle(s.c_str(), nullptr, nullptr, &status);
  std::string out = status == 0 && d != nullptr ? d : s;
  std::free(d);
  return out;
}

struct Section {
  std::string name;
  uint32_t name_off = 0, type = 0;
  uint64_t off = 0, size = 0;
  uint32_t link = 0;
};

std::vector<Section> Sections(const std::string& e) {
  std::vector<Section> out;
  const uint64_t shoff = Load<uint64_t>(e, 0x28);
  const uint16_t shentsize = Load<uint16_t>(e, 0x3a), shnum = Load<uint16_t>(e, 0x3c),
                 shstrndx = Load<uint16_t>(e, 0x3e);
  for (uint16_t i = 0; i < shnum; ++i) {
    const size_t h = shoff + static_cast<size_t>(i) * shentsize;
    Section s;
    s.name_off = Load<uint32_t>(e, h);
    s.type = Load<uint32_t>(e, h + 4);
    s.off = Load<uint64_t>(e, h + 24);
    s.size = Load<uint64_t>(e, h + 32);
    s.link = Load<uint32_t>(e, h + 40);
    out.push_back(s);
  }
  if (shstrndx >= out.size()) return {};
  const uint64_t strings = out[shstrndx].off;
  for (Section& s : out)
    if (strings + s.name_off < e.size()) s.name = std::string(e.c_str() + strings + s.name_off);
  return out;
}

// Symbol names by index, from .symtab.
std::vector<std::string> Symbols(const std::string& e, const std::vector<Section>& secs) {
  std::vector<std::string> names;
  for (const Section& s : secs) {
    if (s.name != ".symtab" || s.link >= secs.size()) continue;
    const uint64_t strings = secs[s.link].off;
    for (uint64_t o = 0; o + 24 <= s.size; o += 24) {
      const uint64_t at = strings + Load<uint32_t>(e, s.off + o);
      names.emplace_back(at < e.size() ? e.c_str() + at : "");
    }
  }
  return names;
}

// Calls f(attribute, payload) for every record of an .nv.info section: a 4-byte header
// (format, attribute, 16-bit value or size); format 4 (a sized value) carries `size` more bytes.
template <typename F>
void ForEachInfo(const std::string& e, const Section& s, F f) {
  for (uint64_t p = s.off; p + 4 <= s.off + s.size;) {
    const uint8_t fmt = Load<uint8_t>(e, p), attr = Load<uint8_t>(e, p + 1);
    const uint16_t v = Load<uint16_t>(e, p + 2);
    if (fmt == 4) {
      f(attr, e.substr(p + 4, v));
      p += 4 + v;
    } else {
      f(attr, std::string(reinterpret_cast<const char*>(&v), 2));
      p += 4;
    }
  }
}

void ParseCubin(const std::string& e, std::map<std::string, Kernel>* kernels) {
  const std::vector<Section> secs = Sections(e);
  const std::vector<std::string> syms = Symbols(e, secs);
  std::map<std::string, Kernel> found;
  const std::string info = ".nv.info.", shared = ".nv.shared.";
  for (const Section& s : secs) {
    if (s.name.compare(0, info.size(), info) == 0) {
      Kernel& k = found[s.name.substr(info.size())];
      ForEachInfo(e, s, [&](uint8_t attr, const std::string& v) {
        if (attr == kEiMaxThreads && v.size() >= 12)
          k.max_threads = Load<int32_t>(v, 0) * Load<int32_t>(v, 4) * Load<int32_t>(v, 8);
      });
    }
  }
  for (const Section& s : secs) {
    if (s.name.compare(0, shared.size(), shared) == 0) {
      auto it = found.find(s.name.substr(shared.size()));
      if (it != found.end()) it->second.static_smem = static_cast<int64_t>(s.size);
    }
    if (s.name != ".nv.info") continue;
    ForEachInfo(e, s, [&](uint8_t attr, const std::string& v) {
      if (v.size() < 8) return;
      const uint32_t sym = Load<uint32_t>(v, 0), val = Load<uint32_t>(v, 4);
      if (sym >= syms.size()) return;
      auto it = found.find(syms[sym]);
      if (it == found.end()) return;  // a device function, not a kernel
      if (attr == kEiRegCount) it->second.regs = static_cast<int>(val);
      if (attr == kEiFrameSize) it->second.frame = val;
    });
  }
  for (auto& kv : found) {
    kv.second.name = kv.first;
    (*kernels)[kv.first] = kv.second;  // the same kernel in two objects: identical cubins
  }
}

// Every fatbin in the file (objects, archives and linked binaries embed them): its ELF entries.
bool ScanFile(const std::string& path, std::map<std::string, Kernel>* kernels, int* cubins) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string b = ss.str();
  for (size_t i = 0; i + 16 <= b.size(); ++i) {
    if (Load<uint32_t>(b, i) != kFatbinMagic || Load<uint16_t>(b, i + 6) != 16) continue;
    const uint64_t end = i + 16 + Load<uint64_t>(b, i + 8);
    for (uint64_t p = i + 16; p + 16 <= end && end <= b.size();) {
      const uint16_t kind = Load<uint16_t>(b, p);
      const uint32_t hsize = Load<uint32_t>(b, p + 4);
      const uint64_t size = Load<uint64_t>(b, p + 8);
      if (hsize == 0 || p + hsize + size > end) break;
      if (kind == 2) {  // an ELF cubin (kind 1 is PTX)
        const std::string cubin = b.substr(p + hsize, size);
        if (cubin.compare(0, 4, "\x7f" "ELF") != 0) {
          std::fprintf(stderr, "%s: a compressed cubin at offset %llu: cannot read it\n",
                       path.c_str(), static_cast<unsigned long long>(p));
          return false;
        }
        ParseCubin(cubin, kernels);
        ++*cubins;
      }
      p += hsize + size;
    }
    i = end > i ? end - 1 : i;
  }
  return true;
}

// The problems of one kernel, empty when it can launch with the threads its bound allows.
std::string Problems(const Kernel& k) {
  std::ostringstream why;
  // Without a bound (a library's kernel: ours are required to have one by the source check)
  // any launch up to 1024 threads is legal, so that is what must fit.
  const int threads = k.max_threads > 0 ? k.max_threads : kMaxThreadsPerBlock;
  if (k.regs > kMaxRegsPerThread) why << k.regs << " registers per thread > 255; ";
  const int warps = (threads + 31) / 32;
  const int per_warp = (k.regs * 32 + kRegAllocUnit - 1) / kRegAllocUnit * kRegAllocUnit;
  if (static_cast<int64_t>(warps) * per_warp > kRegsPerBlock)
    why << k.regs << " registers x " << threads << " threads = " << warps * per_warp
        << " registers per block > " << kRegsPerBlock << "; ";
  if (k.max_threads > kMaxThreadsPerBlock) why << k.max_threads << " threads per block > 1024; ";
  if (k.static_smem > kStaticSmemBytes + kReservedSmemBytes)
    why << k.static_smem << " bytes of static shared memory > 48 KiB (+ 1 KiB reserved); ";
  if (k.regs < 0) why << "no register count found; ";
  return why.str();
}

int CheckKernels(const std::map<std::string, Kernel>& kernels) {
  int bad = 0;
  for (const auto& kv : kernels) {
    const Kernel& k = kv.second;
    const std::string why = Problems(k);
    std::printf("%s  regs %3d  bound %4d  smem %6lld  stack %4lld  %s\n",
                why.empty() ? "ok  " : "FAIL", k.regs, k.max_threads,
                static_cast<long long>(k.static_smem), static_cast<long long>(k.frame),
                Demangle(k.name).c_str());
    if (!why.empty()) {
      std::printf("      %s\n", why.c_str());
      ++bad;
    }
  }
  return bad;
}

}  // namespace

int CheckSources(const std::vector<std::string>& dirs);  // kernel_resources_sources.cc

int main(int argc, char** argv) {
  std::vector<std::string> dirs, files;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--sources") == 0 && i + 1 < argc) {
      dirs.push_back(argv[++i]);
    } else {
      files.push_back(argv[i]);
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s [--sources DIR]... FILE...\n", argv[0]);
    return 2;
  }
  std::map<std::string, Kernel> kernels;
  int cubins = 0;
  for (const std::string& f : files) {
    if (!ScanFile(f, &kernels, &cubins)) {
      std::fprintf(stderr, "cannot read %s\n", f.c_str());
      return 2;
    }
  }
  if (kernels.empty()) {
    std::fprintf(stderr, "no kernels found in %d cubin(s): nothing checked\n", cubins);
    return 2;
  }
  const int bad = CheckKernels(kernels);
  const int bad_src = CheckSources(dirs);
  std::printf("%zu kernels in %d cubins: %d cannot be guaranteed to launch; %d source problem(s)\n",
              kernels.size(), cubins, bad, bad_src);
  return bad + bad_src == 0 ? 0 : 1;
}
