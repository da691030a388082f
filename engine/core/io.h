// qforge — file I/O with errors that name the file, and atomic writes.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qf {

// Every file qforge reads by a user-given path goes through check_regular_file first: a FIFO
// would block, /dev/zero would never end; the error names the path and what it is.
void check_regular_file(const std::string& path);
// Whole file; error names it if missing/unreadable/not regular, or when it holds more than max_bytes.
std::string read_file(const std::string& path, uint64_t max_bytes = UINT64_MAX);
int64_t file_size(const std::string& path);         // error if missing or not a regular file
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
// Writes to path.tmp.<pid>, fsyncs, renames over path: never a half file under the final name.
// Every atomic writer first removes stale temporaries of the same path (path.tmp.<pid>,
// path.old.<pid> whose process is gone: left by a killed run).
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
// path. Over an existing directory it swaps the two atomically (renameat2 RENAME_EXCHANGE) and
// then deletes the old one (now under the temporary name): at every instant path holds the old
// or the new directory, never nothing. Filesystems without the exchange fall back to two renames.
class AtomicDir {
 public:
  explicit AtomicDir(const std::string& path);
  ~AtomicDir();
  const std::string& tmp() const { return tmp_; }
  void commit();
  // Tests only: observes commit() after each of its steps (it never pauses or alters them).
  std::function<void(const char* step)> on_step;
 private:
  std::string path_, tmp_;
  bool done_ = false;
};
// Removes path.tmp.<pid> and path.old.<pid> (files or directories) whose pid is not a live process.
void remove_stale_temps(const std::string& path);
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);
std::string file_fingerprint(const std::string& path);  // "fnv1a64:<hex>" of the content
std::string fingerprint(const std::string& bytes);  // the same for bytes in memory
std::string fingerprint_text(uint64_t h);  // "fnv1a64:<16 hex digits>"

}  // namespace qf
