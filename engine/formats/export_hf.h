// qforge — pieces shared by the HF-directory exports (export_hf.cpp: float weights,
// export_gptq.cpp: GPTQ v1): config.json, HF row order of q/k, the tokenizer files.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qf {

// config.json for m: for a Llama-kind model LlamaForCausalLM (Qwen2ForCausalLM when exactly
// q/k/v carry biases; MistralForCausalLM when every layer slides; Llama's attention_bias /
// mlp_bias flags otherwise), else the architecture's row of kHfLayouts (Qwen3, Gemma 2/3);
// every field open_hf reads (sliding layers as layer_types), torch_dtype and the tokenizer's
// bos/eos ids. `what` prefixes errors ("save hf '<dir>'").
nlohmann::ordered_json hf_config_json(const Model& m, const Tokenizer* tok, const std::string& torch_dtype, const std::string& what);

// A norm gain as the HF checkpoint stores it: g − hf_norm_shift (Gemma stores w of (1 + w)).
Tensor hf_norm(const Model& m, const Tensor& g);

// Whether block b's linear has a bias, without converting a lazily loaded block.
bool hf_has_bias(const Model& m, int b, const std::string& linear);

// HF stores q/k rows in rotate-half order; for a model in RoPE-pair order (llama2.c, GGUF)
// row o of the HF tensor is row order[o] of ours. Identity for other linears / HF-order models.
std::vector<int64_t> hf_row_order(const Model& m, const std::string& linear, int64_t rows);
// w ([rows, ...] or [rows]) with its rows in HF order.
Tensor hf_rows(const Model& m, const std::string& linear, const Tensor& w);

// Copies the tokenizer into the directory being assembled: from an HF source, its tokenizer
// files (tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer.model,
// generation_config.json, tokenizer.bin); from a llama2.c tokenizer, its file as tokenizer.bin.
void hf_write_tokenizer(const Model& m, const Tokenizer* tok, const std::string& dir);

// Dense LSB-first bitstream: value k occupies bits [bits·k, bits·k + bits) of the 32-bit words
// (ORed in: start from zeroed words). For 2/4/8 bits this is 32/bits values per word; for 3 bits
// GPTQ's layout of 32 values over 3 words (values 10 and 21 split across word boundaries); for any
// width compressed-tensors' pack-quantized rows (ceil(n·bits/32) words).
void pack_bits(const std::vector<uint32_t>& vals, int bits, uint32_t* words);

// The shortest decimal that reads back as the same float, as a JSON number (1e-05, not
// 9.999999747378752e-06).
double json_float(float v);

}  // namespace qf
