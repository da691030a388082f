// qforge — file I/O with errors that name the file, and atomic writes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qf {

std::string read_file(const std::string& path);     // whole file; error names it if missing/unreadable
int64_t file_size(const std::string& path);         // error if missing
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
// Writes to path.tmp.<pid>, fsyncs, renames over path: never a half file under the final name.
void write_file_atomic(const std::string& path, const std::string& bytes);
void make_dirs(const std::string& path);             // mkdir -p
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);
std::string file_fingerprint(const std::string& path);  // "fnv1a64:<hex>" of the content

}  // namespace qf
