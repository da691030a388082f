#include "formats/model_source.h"

#include <cmath>
#include <cstring>

#include "formats/dtypes.h"

namespace qf {

// Types a TensorSource may have: those the table can convert to f32.
static const DTypeTraits* readable_dtype(const std::string& dtype) {
  const DTypeTraits* d = dtype_by_name(dtype);
  return d && d->to_f32 ? d : nullptr;
}

uint64_t dtype_nbytes(const std::string& dtype, int64_t numel, const std::string& what) {
  if (numel < 0) fail(what, ": negative element count");
  const DTypeTraits* d = readable_dtype(dtype);
  if (!d) fail(what, ": unsupported dtype '", dtype, "'");
  if (numel % d->block_elems) fail(what, ": ", numel, " elements is not a whole number of ", dtype, " blocks of ", d->block_elems);
  return (uint64_t)(numel / d->block_elems) * (uint64_t)d->block_bytes;
}

static int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::vector<int64_t> rope_pair_rows(int64_t rows, int n_heads) {
  if (n_heads <= 0 || rows % n_heads) fail("RoPE row permutation: ", rows, " rows is not a multiple of ", n_heads, " heads");
  const int64_t hd = rows / n_heads;
  if (hd % 2) fail("RoPE row permutation: head dimension ", hd, " is odd");
  std::vector<int64_t> o((size_t)rows);
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t w = 0; w < 2; ++w) o[h * hd + 2 * i + w] = h * hd + w * (hd / 2) + i;
  return o;
}

std::vector<int64_t> rope_half_rows(int64_t rows, int n_heads) {
  const std::vector<int64_t> p = rope_pair_rows(rows, n_heads);
  std::vector<int64_t> inv(p.size());
  for (size_t r = 0; r < p.size(); ++r) inv[(size_t)p[r]] = (int64_t)r;
  return inv;
}

Tensor gather_rows(const Tensor& w, const std::vector<int64_t>& order) {
  const int64_t rows = w.size(0), cols = w.dim() == 2 ? w.size(1) : 1;
  if ((int64_t)order.size() != rows) fail("gather_rows: ", order.size(), " row indices for ", rows, " rows");
  Tensor src = w.contiguous();
  Tensor out = Tensor::empty(w.shape());
  const float* a = src.data<float>();
  float* b = out.data<float>();
  for (int64_t r = 0; r < rows; ++r) std::memcpy(b + r * cols, a + order[(size_t)r] * cols, sizeof(float) * cols);
  return out;
}

Tensor rope_pairs_from_halves(const Tensor& w, int n_heads) { return gather_rows(w, rope_pair_rows(w.size(0), n_heads)); }
Tensor rope_halves_from_pairs(const Tensor& w, int n_heads) { return gather_rows(w, rope_half_rows(w.size(0), n_heads)); }

void tensor_source_to_f32(const TensorSource& ts, float* dst) {
  const std::string what = "tensor '" + ts.name + "'";
  const int64_t n = shape_numel(ts.shape);
  const uint64_t need = dtype_nbytes(ts.dtype, n, what);
  if (ts.nbytes != need)
    fail("file '", ts.file->path, "': ", what, " of dtype ", ts.dtype, " and shape ", shape_str(ts.shape), " needs ", need,
         " bytes, the header gives ", ts.nbytes);
  const uint8_t* p = ts.file->at(ts.offset, ts.nbytes, what);
  readable_dtype(ts.dtype)->to_f32(p, dst, n);  // dtype_nbytes checked it
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(dst[i])) fail("file '", ts.file->path, "': ", what, " holds a non-finite value at element ", i);
}

Tensor tensor_source_load(const TensorSource& ts) {
  for (int64_t d : ts.shape)
    if (d < 0 || d > (int64_t)1 << 32) fail("file '", ts.file->path, "': tensor '", ts.name, "' has absurd shape ", shape_str(ts.shape));
  Tensor t = Tensor::empty(ts.shape);
  tensor_source_to_f32(ts, t.data<float>());
  if (ts.unpermute_heads > 0) t = rope_halves_from_pairs(t, ts.unpermute_heads);
  return t;
}

static const TensorSource& need(const ModelSource& src, const std::string& name, const Shape& shape) {
  auto it = src.tensors.find(name);
  if (it == src.tensors.end()) fail("model '", src.path, "': tensor '", name, "' is missing");
  if (it->second.shape != shape)
    fail("model '", src.path, "': tensor '", name, "' (", it->second.name, ") has shape ", shape_str(it->second.shape),
         ", the config implies ", shape_str(shape));
  return it->second;
}


static Linear make_linear(const ModelSource& src, const std::string& pre, const BlockLinear& bl) {
  const Shape shape = linear_shape(src.cfg, bl.name);
  Linear l;
  l.name = bl.name;
  l.input = bl.spec->input;
  l.weight = tensor_source_load(need(src, pre + bl.name + ".weight", shape));
  const std::string bname = pre + bl.name + ".bias";
  if (src.tensors.count(bname)) l.bias = tensor_source_load(need(src, bname, {shape[0]}));
  return l;
}

Block load_block(const ModelSource& src, int i) {
  const ModelConfig& c = src.cfg;
  const std::string pre = "blocks." + std::to_string(i) + ".";
  const ArchSpec& a = arch_of(c);
  Block b;
  for (const NormSpec& n : a.norms) {
    Tensor g = tensor_source_load(need(src, pre + n.name, {norm_size(c, n)}));
    if (src.norm_shift != 0.f) {  // HF Gemma: the file holds g − 1 (arch.h hf_norm_shift)
      float* p = g.f32();
      for (int64_t j = 0; j < g.numel(); ++j) p[j] += src.norm_shift;
    }
    b.norm(n.name) = std::move(g);
  }
  for (const BlockLinear& s : block_linears(c)) b.linears.push_back(make_linear(src, pre, s));
  return b;
}

// A lazy model's blocks, converted from the opened checkpoint.
struct SourceBlocks final : BlockLoader {
  std::shared_ptr<const ModelSource> src;
  explicit SourceBlocks(std::shared_ptr<const ModelSource> s) : src(std::move(s)) {}
  Block load(int i) const override { return load_block(*src, i); }
  int64_t n_params(int i) const override {
    const std::string pre = "blocks." + std::to_string(i) + ".";
    int64_t n = 0;
    for (auto it = src->tensors.lower_bound(pre); it != src->tensors.end() && it->first.rfind(pre, 0) == 0; ++it) {
      int64_t k = 1;
      for (int64_t d : it->second.shape) k *= d;
      n += k;
    }
    return n;
  }
  Shape weight_shape(int i, const std::string& linear) const override {
    return need(*src, "blocks." + std::to_string(i) + "." + linear + ".weight", linear_shape(src->cfg, linear)).shape;
  }
  bool has_bias(int i, const std::string& linear) const override {
    return src->tensors.count("blocks." + std::to_string(i) + "." + linear + ".bias") > 0;
  }
};

Model assemble_model(std::shared_ptr<const ModelSource> src, bool lazy) {
  const ModelConfig& c = src->cfg;
  validate_config(c, "model '" + src->path + "'");
  Model m;
  m.cfg = c;
  m.source = src->path;
  m.format = src->format;
  m.src = src;
  const int64_t V = c.vocab_size, D = c.dim;
  m.tok_emb = tensor_source_load(need(*src, "tok_emb", {V, D}));
  m.final_norm = tensor_source_load(need(*src, "final_norm", {D}));
  if (src->norm_shift != 0.f) {
    float* p = m.final_norm.f32();
    for (int64_t j = 0; j < D; ++j) p[j] += src->norm_shift;
  }
  if (c.tied_classifier) {
    if (src->tensors.count("classifier")) fail("model '", src->path, "': config says tied embeddings but the file has a classifier");
    m.classifier = m.tok_emb;
  } else {
    m.classifier = tensor_source_load(need(*src, "classifier", {V, D}));
  }
  m.blocks.resize(c.n_layers);
  if (lazy) {
    // Check every block's tensors exist with the right shapes now, convert later.
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string pre = "blocks." + std::to_string(i) + ".";
      for (const NormSpec& n : arch_of(c).norms) need(*src, pre + n.name, {norm_size(c, n)});
      for (const BlockLinear& s : block_linears(c)) need(*src, pre + s.name + ".weight", linear_shape(c, s.name));
    }
    m.resident.assign(c.n_layers, 0);
    m.lazy_blocks = std::make_shared<SourceBlocks>(src);
  } else {
    for (int i = 0; i < c.n_layers; ++i) m.blocks[i] = load_block(*src, i);
  }
  return m;
}

}  // namespace qf
