// qforge — read-only memory-mapped files with bounds-checked access.
//
// Checkpoints (safetensors, GGUF) are mapped, never read whole: a tensor is converted to
// f32 straight from the mapping when it is needed, so peak memory is the f32 model (or one
// block of it when loading lazily), not file + model.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace qf {

struct MappedFile {
  std::string path;
  const uint8_t* data = nullptr;
  uint64_t size = 0;

  static std::shared_ptr<MappedFile> open(const std::string& path);  // error names the file
  ~MappedFile();
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Pointer to [off, off+n); fails naming the file and `what` when the range leaves the file
  // (overflow-safe: a lying header cannot wrap around).
  const uint8_t* at(uint64_t off, uint64_t n, const std::string& what) const;
};

}  // namespace qf
