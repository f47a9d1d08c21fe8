// Host memory kept by the process between training steps.
//
// Every step allocates the same large host buffers again (all-to-all send and receive buffers,
// expert rows, hidden activations), each a few hundred KB to tens of MB. By default glibc maps
// blocks over 128 KB straight from the kernel and gives freed memory at the top of the heap back,
// so each step's buffers arrive as fresh pages: a page fault and a page clear for every 4 KB,
// about a tenth of an MoE layer's time at vmoe_tiny's shapes (tests/bench/RESULTS.md). A trainer
// reuses the same sizes step after step, so it keeps what it frees instead.
#pragma once

#include <string>

namespace moe {

// Serves blocks of up to 32 MiB (glibc's largest mmap threshold) from the heap and stops
// trimming it, for the whole process. Call once, before the first step. Returns false with the
// reason in *error if glibc refuses a setting (the process then runs as before, only slower).
bool KeepFreedHostMemory(std::string* error);

}  // namespace moe
