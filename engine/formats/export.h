// qforge — writing a (quantized) model out. Every writer is atomic: files go to a temporary
// name, are fsynced and renamed; a directory is assembled under a temporary name and renamed.
//
//   hf      HF directory: config.json + model.safetensors (dequantized, "fake-quant"), tokenizer
//           files carried over; dtype F32 | F16 | BF16
//   gguf    GGUF v3, arch llama; dtype F32 | F16 (dequantized) or Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1
//           (codes; only when every linear's grid maps exactly onto the block format, else an error)
//           or Q2_K | Q3_K | Q4_K | Q5_K | Q6_K (K-quant grids; a linear with a uniform grid, e.g.
//           one too narrow for super-blocks, goes out in the 32-block type that stores its grid)
//   gptq    HF directory with GPTQ v1 safetensors (qweight/qzeros/scales/g_idx) + quantization_config
//   compressed-tensors  HF directory, pack-quantized linears (weight_packed/weight_scale/
//           weight_zero_point/weight_shape) + quantization_config with config groups (llm-compressor,
//           vLLM); uniform 2..8-bit grids, exact codes and zeros, fp16 scales
//   qforge  qforge's own exact format: safetensors tensors + a versioned JSON header (any grid,
//           mixed bits, outliers); round-trips exactly
#pragma once
#include <string>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qf {

struct SaveOptions {
  std::string format;          // hf | gguf | gptq | compressed-tensors | qforge
  std::string dtype;           // "" = the format's default (hf: F32, gguf: F16)
};

// The exporters as data (llama-quantize's QUANT_OPTIONS): one row per format. save_model
// dispatches through it and check_save validates options against it.
struct ExportFormat {
  const char* name;                  // "gguf"
  const char* display;               // "GGUF" (messages)
  std::vector<const char*> dtypes;   // the dtypes it takes (empty: takes none)
  const char* default_dtype;         // when none is given ("" for formats that take none)
  bool dtype_any_case;               // "q4_0" names Q4_0 (gguf)
  bool directory;                    // writes a directory (else one file)
  bool codes;                        // stores every linear as codes (gptq); a gguf dtype with a
                                     // GridFit (dtypes.h) makes gguf store codes as well
  std::vector<int> bits;             // the bit widths it packs (empty: any)
  // Writes the model (dtype: resolved, never empty for formats that take one).
  void (*save)(const Model& m, const Tokenizer* tok, const std::string& path, const std::string& dtype);
  // Every refusal of `save` that is decided before the first byte is written (config, dtype,
  // each linear's grid against the format), without writing.
  void (*check)(const Model& m, const Tokenizer* tok, const std::string& path, const std::string& dtype);
  bool takes(const std::string& dtype) const;
};
const std::vector<ExportFormat>& export_formats();
const ExportFormat* export_format(const std::string& name);  // nullptr when unknown
std::string export_format_names();                           // "hf, gguf, gptq or qforge"

void save_model(const Model& m, const Tokenizer* tok, const std::string& path, const SaveOptions& o);

// What the options tell about the grids a run will make, before it makes them.
struct GridPlan {
  int bits = 4;
  int64_t group = -1;          // -1: one group per row
  bool sym = false;
  bool f16_scales = false;
  bool outliers = false;       // sparse outliers (QuantEase with outliers)
  bool allocated = false;      // per-group bit allocation (CVXQ)
  bool float_zero = false;     // float zero points (decoupleQ)
  bool signed_scales = false;  // negative scales (grid mapping llamacpp)
  bool transforms = false;     // input/output transforms around the codes (methods.md#transforms)
  std::string ktype;           // K-quant grids of this type ("Q4_K"; linears too narrow for 256-column
                               // super-blocks get the 32-block fallback grid and type)
};

// The first reason the export options cannot be stored, with the option it concerns; ok()
// when they can. Checks, in order: the format, its dtype, the grids `plan` describes (when
// given) against the format's and dtype's rows, and the model's actual grids and config (when
// `m` is given: save_model's checks that precede writing, path only names the output in
// messages). What the options cannot tell (a zero point of 0 in GPTQ, a weight edited after
// quantization) is left to save.
struct SaveRefusal {
  std::string option;          // "save_format" | "save_dtype" | "save" (the model's grids); "" = ok
  std::string message;
  bool ok() const { return option.empty(); }
};
SaveRefusal check_save(const SaveOptions& o, const GridPlan* plan, const Model* m = nullptr, const Tokenizer* tok = nullptr,
                       const std::string& path = "");

// Implemented per format (export_hf.cpp, export_gptq.cpp, export_qforge.cpp, export_gguf.cpp).
void save_hf(const Model& m, const Tokenizer* tok, const std::string& dir, const std::string& dtype);
void save_gptq(const Model& m, const Tokenizer* tok, const std::string& dir);
void save_qforge(const Model& m, const Tokenizer* tok, const std::string& path);
// Blocks first .. first+count−1 (0-based) alone, in the qforge layout with header field "blocks"
// (loader_qforge.h): a run's block checkpoint, restored by load_qforge_blocks.
void save_qforge_blocks(const Model& m, const std::string& path, int first, int count);
void save_gguf(const Model& m, const Tokenizer* tok, const std::string& path, const std::string& dtype);
void save_compressed_tensors(const Model& m, const Tokenizer* tok, const std::string& dir);
void check_compressed_tensors(const Model& m, const Tokenizer* tok, const std::string& dir);
// Their checks before writing (each save_* calls its own first).
void check_hf(const Model& m, const Tokenizer* tok, const std::string& dir, const std::string& dtype);
void check_gptq(const Model& m, const Tokenizer* tok, const std::string& dir);
void check_qforge(const Model& m, const std::string& path);
void check_gguf(const Model& m, const std::string& path, const std::string& dtype);

}  // namespace qf
