// qforge — model loading by path: picks the format and finds the tokenizer.
#pragma once
#include <string>

#include "model.h"

namespace qf {

struct ModelFiles {
  std::string model;      // checkpoint file
  std::string tokenizer;  // "" when none was found
  std::string format;     // "llama2c"
};

// `path` is a checkpoint file or a directory holding one. In a directory, the tokenizer is
// tokenizer.bin or tok*.bin and the checkpoint the other *.bin; beside a file, the same
// names are looked for in its directory.
ModelFiles resolve_model_files(const std::string& path);
Model load_model(const ModelFiles& files);

}  // namespace qf
