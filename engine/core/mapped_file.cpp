#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/io.h"

namespace qf {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  check_regular_file(path);  // a FIFO would block the open, a device never ends
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  if (fd < 0) fail("cannot open file '", path, "': ", std::strerror(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail("'", path, "' is not a readable file");
  }
  auto mf = std::make_shared<MappedFile>();
  mf->path = path;
  mf->size = (uint64_t)st.st_size;
  if (mf->size > 0) {
    void* p = ::mmap(nullptr, mf->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail("cannot map file '", path, "': ", std::strerror(e));
    }
    mf->data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return mf;
}

MappedFile::~MappedFile() {
  if (data) ::munmap(const_cast<uint8_t*>(data), size);
}

const uint8_t* MappedFile::at(uint64_t off, uint64_t n, const std::string& what) const {
  if (off > size || n > size - off)
    fail("file '", path, "': ", what, " spans bytes [", off, ", ", off, "+", n, ") but the file has ", size, " bytes");
  return data + off;
}

}  // namespace qf
