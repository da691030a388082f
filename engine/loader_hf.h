// qforge — Hugging Face checkpoint directories: config.json + model.safetensors (or a sharded
// model.safetensors.index.json). Architectures LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM; dtypes F32/F16/BF16. Tensors are mapped, not read.
#pragma once
#include <string>

#include "model_source.h"

namespace qf {

// Parses config.json and the safetensors headers of `dir` into a ModelSource (HF q/k row
// order: cfg.rope_interleaved = false). Errors name the file and the field.
ModelSource open_hf(const std::string& dir);

}  // namespace qf
