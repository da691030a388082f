// qforge — Hugging Face checkpoint directories: config.json + model.safetensors (or a sharded
// model.safetensors.index.json). Architectures LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM; dtypes F32/F16/BF16. Tensors are mapped, not read.
#pragma once
#include <string>

#include "formats/model_source.h"

namespace qf {

// Parses config.json and the safetensors headers of `dir` into a ModelSource (HF q/k row
// order: cfg.rope_interleaved = false). Errors name the file and the field.
ModelSource open_hf(const std::string& dir);

// The name table shared by the loader and the hf/gptq exports:
// "blocks.3.q.weight" <-> "model.layers.3.self_attn.q_proj.weight", "tok_emb" <->
// "model.embed_tokens.weight", "final_norm" <-> "model.norm.weight", "classifier" <-> "lm_head.weight".
// Names under architecture a's table (Gemma's norms are named differently from Llama's).
std::string hf_tensor_name(const std::string& canonical, const ArchSpec& a = kLlama);  // error for a name outside the table
std::string hf_canonical_name(const std::string& hf, const ArchSpec& a = kLlama);      // "" for a name outside the table

// Architectures the loader accepts, by config.json `architectures` entry -> model_type.
const char* hf_model_type(const std::string& architecture);  // nullptr when unknown

}  // namespace qf
