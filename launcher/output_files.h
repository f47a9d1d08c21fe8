// Output paths checked before a run spends time, and whole files written with every step checked
// (write, flush, close), so an output that cannot be kept is an error, never a silent loss.
// Errors are returned as text naming the path and the reason (strerror), for the caller to agree
// on across ranks and report once.
#pragma once

#include <string>

namespace moe {

// `dir` (the value of --`flag`) is created if missing, must be a directory, and must accept a new
// file: a probe file is created, written, closed and removed. On failure *error is
// "config error: --FLAG=DIR: <why>".
bool CheckOutputDir(const std::string& flag, const std::string& dir, std::string* error);

// `path` (the value of --`flag`) must be writable without losing what is there now: it is opened
// for appending (created if missing, and removed again if it was created). A device or pipe
// (e.g. /dev/full) must also take a one-byte probe write ("\n"). On failure *error is
// "config error: --FLAG=PATH: <why>".
bool CheckOutputFile(const std::string& flag, const std::string& path, std::string* error);

// Replaces `path` with `bytes`. On failure *error is "PATH: <step> failed: <strerror>".
bool WriteWholeFile(const std::string& path, const std::string& bytes, std::string* error);

}  // namespace moe
