// qforge — GGUF v3 files with architecture "llama": metadata → ModelConfig, llama.cpp tensor
// names → canonical names, q/k rows returned to HF order, embedded tokenizer → TokenizerSpec.
#pragma once
#include <string>

#include "formats/model_source.h"

namespace qf {

ModelSource open_gguf(const std::string& path);

}  // namespace qf
