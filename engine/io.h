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
void remove_tree(const std::string& path);           // rm -rf (no error if absent)

// Streaming atomic file: writes go to path.tmp.<pid>; commit() fsyncs and renames over
// path. Destroyed without commit() (an error mid-way), the temporary is removed.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  uint64_t written() const { return written_; }
  void commit();
 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
};

// Atomic directory: files are written under tmp() (= path.tmp.<pid>); commit() renames it to
// path, replacing an existing directory only after the new one is complete.
class AtomicDir {
 public:
  explicit AtomicDir(const std::string& path);
  ~AtomicDir();
  const std::string& tmp() const { return tmp_; }
  void commit();
 private:
  std::string path_, tmp_;
  bool done_ = false;
};
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);
std::string file_fingerprint(const std::string& path);  // "fnv1a64:<hex>" of the content

}  // namespace qf
