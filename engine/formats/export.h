// qforge — writing a (quantized) model out. Every writer is atomic: files go to a temporary
// name, are fsynced and renamed; a directory is assembled under a temporary name and renamed.
//
//   hf      HF directory: config.json + model.safetensors (dequantized, "fake-quant"), tokenizer
//           files carried over; dtype F32 | F16 | BF16
//   gguf    GGUF v3, arch llama; dtype F32 | F16 (dequantized) or Q8_0 | Q4_0 | Q4_1 (codes; only
//           when every linear's grid maps exactly onto the block format, else an error)
//   gptq    HF directory with GPTQ v1 safetensors (qweight/qzeros/scales/g_idx) + quantization_config
//   qforge  qforge's own exact format: safetensors tensors + a versioned JSON header (any grid,
//           mixed bits, outliers); round-trips exactly
#pragma once
#include <string>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qf {

struct SaveOptions {
  std::string format;          // hf | gguf | gptq | qforge
  std::string dtype;           // "" = the format's default (hf: F32, gguf: F16)
};

void save_model(const Model& m, const Tokenizer* tok, const std::string& path, const SaveOptions& o);

// Implemented per format (export_hf.cpp, export_gptq.cpp, export_qforge.cpp, export_gguf.cpp).
void save_hf(const Model& m, const Tokenizer* tok, const std::string& dir, const std::string& dtype);
void save_gptq(const Model& m, const Tokenizer* tok, const std::string& dir);
void save_qforge(const Model& m, const Tokenizer* tok, const std::string& path);
void save_gguf(const Model& m, const Tokenizer* tok, const std::string& path, const std::string& dtype);

}  // namespace qf
