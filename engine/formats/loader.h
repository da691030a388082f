// qforge — model loading by path: picks the format and finds the tokenizer.
#pragma once
#include <string>

#include "model/model.h"

namespace qf {

struct ModelFiles {
  std::string model;      // checkpoint file
  std::string tokenizer;  // "" when none was found
  std::string format;     // "llama2c" | "hf" | "gguf" | "qforge"
};

// `path` is a checkpoint file or a directory holding one:
//   a *.safetensors file with qforge_format metadata (or a directory holding one as
//   model.safetensors and no config.json)                               -> qforge; tokenizer inside
//   a directory with config.json (or a *.safetensors file inside one)  -> hf; tokenizer.json,
//                                                                          else tokenizer.bin
//   a file starting with the GGUF magic, or a directory with one *.gguf -> gguf; tokenizer inside
//   otherwise llama2.c: the tokenizer is tokenizer.bin or tok*.bin and the checkpoint the
//   other *.bin; beside a file, the same names are looked for in its directory.
ModelFiles resolve_model_files(const std::string& path);
// lazy: keep the file mapped and convert each block to f32 on first use (hf, gguf).
Model load_model(const ModelFiles& files, bool lazy = false);

}  // namespace qf
