#include "io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "error.h"

namespace qf {

std::string read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot open file '", path, "': ", std::strerror(errno));
  struct stat st{};
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::fclose(f);
    fail("'", path, "' is a directory, expected a file");
  }
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err) fail("error reading file '", path, "'");
  return out;
}

int64_t file_size(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) fail("cannot open file '", path, "': ", std::strerror(errno));
  return (int64_t)st.st_size;
}

bool path_exists(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot write file '", path, "': ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("error writing file '", path, "': ", std::strerror(e));
    }
    done += (size_t)w;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("error writing file '", path, "': ", std::strerror(e));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("cannot rename '", tmp, "' to '", path, "': ", std::strerror(e));
  }
}

void make_dirs(const std::string& path) {
  if (path.empty()) return;
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && !is_directory(cur)) {
      if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        fail("cannot create directory '", cur, "': ", std::strerror(errno));
      if (!is_directory(cur)) fail("cannot create directory '", cur, "': a file is in the way");
    }
    i = j + 1;
  }
}

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) { h ^= p[i]; h *= 0x100000001b3ull; }
  return h;
}

std::string file_fingerprint(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot open file '", path, "': ", std::strerror(errno));
  uint64_t h = 0xcbf29ce484222325ull;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) h = fnv1a64(buf, n, h);
  std::fclose(f);
  char hex[32];
  std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  return std::string("fnv1a64:") + hex;
}

void remove_tree(const std::string& path) {
  struct stat st{};
  if (lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = opendir(path.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(path + "/" + n);
      }
      closedir(d);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_(path + ".tmp." + std::to_string(getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) fail("cannot write file '", path_, "': ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) fail("file '", path_, "': write after commit");
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd_, p + done, n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("error writing file '", path_, "': ", std::strerror(errno));
    }
    done += (size_t)w;
  }
  written_ += n;
}

void AtomicFile::commit() {
  if (fd_ < 0) fail("file '", path_, "': committed twice");
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    fail("error writing file '", path_, "': ", std::strerror(e));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    fail("cannot rename '", tmp_, "' to '", path_, "': ", std::strerror(e));
  }
}

AtomicDir::AtomicDir(const std::string& path) : path_(path), tmp_(path + ".tmp." + std::to_string(getpid())) {
  while (!path_.empty() && path_.back() == '/') path_.pop_back();
  tmp_ = path_ + ".tmp." + std::to_string(getpid());
  if (path_exists(path_) && !is_directory(path_)) fail("cannot write directory '", path_, "': a file is in the way");
  remove_tree(tmp_);
  make_dirs(tmp_);
}

AtomicDir::~AtomicDir() {
  if (!done_) remove_tree(tmp_);
}

void AtomicDir::commit() {
  if (done_) fail("directory '", path_, "': committed twice");
  std::string old;
  if (path_exists(path_)) {
    old = path_ + ".old." + std::to_string(getpid());
    remove_tree(old);
    if (std::rename(path_.c_str(), old.c_str()) != 0) fail("cannot move aside '", path_, "': ", std::strerror(errno));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    if (!old.empty()) std::rename(old.c_str(), path_.c_str());
    fail("cannot rename '", tmp_, "' to '", path_, "': ", std::strerror(e));
  }
  done_ = true;
  if (!old.empty()) remove_tree(old);
}

}  // namespace qf
