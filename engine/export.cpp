#include "export.h"

namespace qf {

void save_model(const Model& m, const Tokenizer* tok, const std::string& path, const SaveOptions& o) {
  if (path.empty()) fail("save: empty output path");
  if (o.format == "hf") return save_hf(m, tok, path, o.dtype.empty() ? "F32" : o.dtype);
  if (o.format == "gguf") return save_gguf(m, tok, path, o.dtype.empty() ? "F16" : o.dtype);
  if (!o.dtype.empty()) fail("save: format '", o.format, "' takes no dtype (got '", o.dtype, "')");
  if (o.format == "gptq") return save_gptq(m, tok, path);
  if (o.format == "qforge") return save_qforge(m, tok, path);
  fail("save: unknown format '", o.format, "' (expected hf, gguf, gptq or qforge)");
}

}  // namespace qf
