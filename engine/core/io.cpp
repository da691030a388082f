#include "core/io.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace qf {

static const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

static void check_mode(const std::string& path, mode_t m) {
  if (S_ISREG(m)) return;
  if (S_ISDIR(m)) fail("'", path, "' is a directory, expected a file");
  fail("'", path, "' is ", file_kind(m), ", expected a regular file");
}

void check_regular_file(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) fail("cannot open file '", path, "': ", std::strerror(errno));
  check_mode(path, st.st_mode);
}

std::string read_file(const std::string& path, uint64_t max_bytes) {
  check_regular_file(path);
  // O_NONBLOCK: should the path turn into a FIFO between the stat and the open, never block.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail("cannot open file '", path, "': ", std::strerror(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    check_regular_file(path);
    fail("'", path, "' changed while opening it");
  }
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      fail("error reading file '", path, "': ", std::strerror(e));
    }
    if (n == 0) break;
    if (out.size() + (uint64_t)n > max_bytes) {  // a file growing while read
      ::close(fd);
      fail("file '", path, "' holds more than ", max_bytes, " bytes");
    }
    out.append(buf, (size_t)n);
  }
  ::close(fd);
  return out;
}

int64_t file_size(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) fail("cannot open file '", path, "': ", std::strerror(errno));
  check_mode(path, st.st_mode);
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
  remove_stale_temps(path);
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
  check_regular_file(path);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot open file '", path, "': ", std::strerror(errno));
  uint64_t h = 0xcbf29ce484222325ull;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) h = fnv1a64(buf, n, h);
  std::fclose(f);
  return fingerprint_text(h);
}

std::string fingerprint_text(uint64_t h) {
  char hex[32];
  std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  return std::string("fnv1a64:") + hex;
}

std::string fingerprint(const std::string& bytes) { return fingerprint_text(fnv1a64(bytes.data(), bytes.size())); }

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
  remove_stale_temps(path_);
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
  remove_stale_temps(path_);
  remove_tree(tmp_);
  make_dirs(tmp_);
}

AtomicDir::~AtomicDir() {
  if (!done_) remove_tree(tmp_);
}

void AtomicDir::commit() {
  if (done_) fail("directory '", path_, "': committed twice");
  auto step = [&](const char* what) {
    if (on_step) on_step(what);
  };
  if (!path_exists(path_)) {
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
      fail("cannot rename '", tmp_, "' to '", path_, "': ", std::strerror(errno));
    done_ = true;
    step("renamed");
    return;
  }
  // One atomic swap: path now holds the new directory, tmp_ the old one, which goes next.
  if (renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, path_.c_str(), RENAME_EXCHANGE) == 0) {
    done_ = true;
    step("exchanged");
    remove_tree(tmp_);
    step("removed old");
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
    fail("cannot replace '", path_, "' with '", tmp_, "': ", std::strerror(errno));
  // No exchange on this filesystem: move the old directory aside, then the new one in.
  const std::string old = path_ + ".old." + std::to_string(getpid());
  remove_tree(old);
  if (std::rename(path_.c_str(), old.c_str()) != 0) fail("cannot move aside '", path_, "': ", std::strerror(errno));
  step("moved old aside");
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    std::rename(old.c_str(), path_.c_str());
    fail("cannot rename '", tmp_, "' to '", path_, "': ", std::strerror(e));
  }
  done_ = true;
  step("renamed");
  remove_tree(old);
  step("removed old");
}

// ---- stale temporaries ------------------------------------------------------------------
static bool pid_alive(long pid) { return pid > 0 && (::kill((pid_t)pid, 0) == 0 || errno == EPERM); }

void remove_stale_temps(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
  const std::string base = slash == std::string::npos ? p : p.substr(slash + 1);
  if (base.empty()) return;
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> stale;
  while (dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() <= base.size() + 5 || n.compare(0, base.size(), base) != 0) continue;
    const std::string rest = n.substr(base.size());  // ".tmp.<pid>" or ".old.<pid>"
    if (rest.compare(0, 5, ".tmp.") != 0 && rest.compare(0, 5, ".old.") != 0) continue;
    const std::string digits = rest.substr(5);
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::stol(digits);
    if (pid == (long)getpid() || pid_alive(pid)) continue;
    stale.push_back(dir + "/" + n);
  }
  closedir(d);
  for (const std::string& s : stale) remove_tree(s);
}

}  // namespace qf
