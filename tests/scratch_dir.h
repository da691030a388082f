// qforge tests — a per-process scratch directory and raw file helpers, shared by the suites
// that write files (formats, exports, hostile inputs).
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace qf_test {

// <system temp>/qf_<tag>_<pid>, emptied and created on first use (one per test binary and tag).
inline std::string scratch_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  auto p = fs::temp_directory_path() / ("qf_" + tag + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Writes `bytes` to `path`, creating its parent directories.
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary).write(bytes.data(), (std::streamsize)bytes.size());
}

}  // namespace qf_test
