// File operations checkpoints need beyond ordinary output: durable writes (write, fsync, close,
// each checked), directory syncs (so a rename survives a crash), ranged reads, and the checksum
// every tensor carries. Errors come back as text naming the path, the step and strerror.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// FNV-1a, 64 bit: fast, and enough to catch a torn or altered shard (not an adversary).
uint64_t Fnv1a64(const void* data, size_t bytes);

// Creates or truncates `path`, writes `bytes` bytes, fsyncs and closes it.
bool WriteFileDurably(const std::string& path, const void* data, size_t bytes, std::string* error);
// fsync on a directory: makes the entries created or renamed in it durable.
bool SyncDirectory(const std::string& dir, std::string* error);
// Reads exactly `bytes` bytes at `offset`; a missing file or a short file is an error.
bool ReadFileRange(const std::string& path, uint64_t offset, uint64_t bytes, void* out,
                   std::string* error);
bool ReadWholeFile(const std::string& path, std::string* out, std::string* error);
// Removes a directory and the plain files in it (checkpoints hold nothing else).
bool RemoveFlatDirectory(const std::string& dir, std::string* error);
// The entries of `dir` (names only, no "." or ".."); false if it cannot be opened.
bool ListDirectory(const std::string& dir, std::vector<std::string>* names, std::string* error);
bool IsDirectory(const std::string& path);

}  // namespace moe
