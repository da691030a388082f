// The format tables (issue 15, item 4): the storage-type table (formats/dtypes.h) against the
// GGUF reader and writer and the converters it names, its grid facts against the exact
// encoders, the exporter table's up-front check (check_save) against what save_model refuses,
// the one RoPE permutation, the model-level tensor names both ways.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "core/half.h"
#include "formats/dtypes.h"
#include "quant/kquant.h"
#include "formats/export.h"
#include "formats/export_hf.h"
#include "formats/gguf.h"
#include "formats/loader_hf.h"
#include "formats/loader_llama2c.h"
#include "formats/model_source.h"
#include "formats/quant_blocks.h"
#include "quant/grid.h"
#include "scratch_dir.h"

using namespace qf;

static const std::string kStories = std::string(QF_SHARED_DIR) + "/models/stories260K/stories260K.bin";
static std::string tmpdir() {
  static const std::string d = qf_test::scratch_dir("formats_tables");
  return d;
}

TEST_CASE("dtype table: names and ggml ids are unique and every lookup finds its own row") {
  std::set<std::string> names;
  std::set<uint32_t> ids;
  for (const DTypeTraits& t : dtype_table()) {
    CHECK(names.insert(t.name).second);
    CHECK(ids.insert(t.id).second);
    CHECK(dtype_by_name(t.name) == &t);
    CHECK(dtype_by_id(t.id) == &t);
    CHECK(ggml_type_info(t.id) == &t);
    CHECK(t.block_elems >= 1);
    CHECK(t.block_bytes >= 1);
    if (t.grid.cols) {
      CHECK(t.grid.cols == t.block_elems);  // one scale per block
      CHECK(bool(t.to_f32));
      CHECK(bool(t.grid.pack));
    }
  }
  CHECK(dtype_by_name("q4_0") == nullptr);  // case-sensitive; the gguf exporter upper-cases
  CHECK(dtype_by_id(4) == nullptr);         // ggml's removed Q4_2
  // ggml's ids of the types qforge writes (a GGUF's tensor type field).
  CHECK(dtype_by_name("F32")->id == 0);
  CHECK(dtype_by_name("F16")->id == 1);
  CHECK(dtype_by_name("Q4_0")->id == 2);
  CHECK(dtype_by_name("Q4_1")->id == 3);
  CHECK(dtype_by_name("Q8_0")->id == 8);
  CHECK(dtype_by_name("BF16")->id == 30);
  // ... and of the types qforge only reads (ggml.h's enum; blocks of docs/formats.md).
  CHECK(dtype_by_name("IQ4_NL")->id == 20);
  CHECK(dtype_by_name("IQ4_NL")->block_elems == 32);
  CHECK(dtype_by_name("IQ4_NL")->block_bytes == 18);
  CHECK(dtype_by_name("IQ4_XS")->id == 23);
  CHECK(dtype_by_name("IQ4_XS")->block_elems == 256);
  CHECK(dtype_by_name("IQ4_XS")->block_bytes == 136);
  CHECK(dtype_by_id(16) == nullptr);  // IQ2_XXS: not read
}

TEST_CASE("dtype table: bytes per block x blocks is what the GGUF reader accepts, one byte less is refused") {
  for (const DTypeTraits& t : dtype_table()) {
    CAPTURE(t.name);
    const uint64_t ne0 = 512, ne1 = 3, blocks = ne0 * ne1 / (uint64_t)t.block_elems;
    const uint64_t nbytes = blocks * (uint64_t)t.block_bytes;
    GGUFWriter w;
    w.add_kv("general.architecture", GGUFValue::make_str("test"));
    w.add_tensor("t", {ne0, ne1}, t.id, [nbytes](const GGUFWriter::Sink& out) {
      std::string b(nbytes, '\x11');
      out(b.data(), b.size());
    });
    const std::string p = tmpdir() + "/type_" + t.name + ".gguf";
    w.write(p);
    const GGUFFile g = gguf_read(p);
    REQUIRE(g.tensors.size() == 1);
    CHECK(g.tensors[0].nbytes == nbytes);
    CHECK(g.tensors[0].type_name() == t.name);
    CHECK(g.data_offset + nbytes <= g.file->size);  // + padding to the alignment
    // The same header over one byte less of data.
    std::string bytes = qf_test::read_bytes(p);
    bytes.resize(g.data_offset + nbytes - 1);
    qf_test::write_bytes(p + ".short", bytes);
    CHECK_THROWS_WITH_AS(gguf_read(p + ".short"), doctest::Contains("lies past the end of the data section"), Error);
    // A first dim that is not a whole number of blocks is refused by the writer.
    if (t.block_elems > 1)
      CHECK_THROWS_WITH_AS(GGUFWriter().add_tensor("u", {(uint64_t)t.block_elems + 1}, t.id, nullptr), doctest::Contains("block size"), Error);
    // What a TensorSource of the type occupies (readable types only).
    if (t.to_f32) {
      CHECK(dtype_nbytes(t.name, (int64_t)(ne0 * ne1), "t") == nbytes);
      if (t.block_elems > 1) CHECK_THROWS_WITH_AS(dtype_nbytes(t.name, t.block_elems + 1, "t"), doctest::Contains("whole number"), Error);
    } else {
      CHECK_THROWS_WITH_AS(dtype_nbytes(t.name, 256, "t"), doctest::Contains("unsupported dtype"), Error);
    }
  }
}

TEST_CASE("dtype table: a round trip per type with both converters") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (const DTypeTraits& t : dtype_table()) {
    if (!t.to_f32 || !t.from_f32) continue;
    CAPTURE(t.name);
    const int64_t n = 4 * 256;
    std::vector<float> x((size_t)n), y((size_t)n), z((size_t)n);
    for (auto& v : x) v = nd(rng);
    std::vector<uint8_t> b((size_t)(n / t.block_elems * t.block_bytes)), b2(b.size());
    t.from_f32(x.data(), b.data(), n);
    t.to_f32(b.data(), y.data(), n);
    if (!t.is_block()) {
      // Scalar types: the value rounded to the type, exactly; and stable.
      for (int64_t i = 0; i < n; ++i) {
        const float want = t.block_bytes == 4 ? x[i] : std::string(t.name) == "F16" ? f16_to_f32(f32_to_f16(x[i])) : bf16_to_f32(f32_to_bf16(x[i]));
        CHECK(y[i] == want);
      }
      t.from_f32(y.data(), b2.data(), n);
      CHECK(b2 == b);
    } else {
      // Block types: the reference quantizer's error is at most one step of the block's scale.
      for (int64_t k = 0; k < n / t.block_elems; ++k) {
        float lo = x[k * t.block_elems], hi = lo;
        for (int64_t j = 0; j < t.block_elems; ++j) lo = std::min(lo, x[k * t.block_elems + j]), hi = std::max(hi, x[k * t.block_elems + j]);
        // A 4-bit grid's step over the block's range is (hi − lo)/15, a Q4_0 step at most 2·max/15; a K
        // super-block's sub-blocks have their own ranges inside [lo, hi] but Q2_K's only 3 steps.
        KQuantType kt;
        const float step = kquant_from_name(t.name, &kt) ? (hi - lo) / (float)((1 << kquant_layout(kt).bits) - 1) : (hi - lo) / 7.f;
        for (int64_t j = 0; j < t.block_elems; ++j) CHECK(std::fabs(y[k * t.block_elems + j] - x[k * t.block_elems + j]) <= step);
      }
      // The table's functions are the ones the named entry points use.
      std::vector<uint8_t> b3(b.size());
      quantize_blocks_ref(t.name, x.data(), n, b3.data());
      CHECK(b3 == b);
      dequantize_blocks(t.name, b.data(), n, z.data());
      CHECK(z == y);
    }
  }
}

// A quantized linear of random weights on a uniform grid: group, bits, sym, fp16 scales; an
// asymmetric grid's scales have 11 − bits significant bits, so that every −scale·zero is
// fp16-exact too (what f16_scales does up to 4 bits).
static QuantizedLinear random_qlinear(int64_t rows, int64_t cols, int bits, bool sym, int64_t group, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v((size_t)(rows * cols));
  for (auto& e : v) e = nd(rng);
  const Tensor W = Tensor::from_data({rows, cols}, v);
  GridSpec s;
  s.bits = bits;
  s.sym = sym;
  s.group = group;
  s.f16_scales = true;
  Grid g = grid_fit(W, s);
  if (!sym)
    for (float& sc : g.scale) {
      int e;
      std::frexp(sc, &e);
      sc = std::ldexp(std::nearbyint(std::ldexp(sc, 11 - bits - e)), e - (11 - bits));
    }
  return quantize_to_grid(W, g);
}

TEST_CASE("dtype table: GridFit::max_bits is what the exact encoders accept, and every accepted grid round trips exactly") {
  for (const DTypeTraits& t : dtype_table()) {
    if (!t.grid.cols) continue;
    for (int sym = 0; sym < 2; ++sym)
      for (int bits = 1; bits <= 8; ++bits) {
        CAPTURE(t.name);
        CAPTURE(sym);
        CAPTURE(bits);
        const QuantizedLinear q = random_qlinear(16, 128, bits, sym, 32, 100 + bits);
        bool accepted = true;
        try {
          check_grid_encodable(q, t.name, "test");
        } catch (const Error&) {
          accepted = false;
        }
        CHECK(accepted == (bits <= t.grid.max_bits(sym)));
        if (!accepted) continue;
        // Encode every row, decode with the table's to_f32: the grid's values, bit for bit.
        const Tensor want = q.dequantize();
        std::vector<uint8_t> row((size_t)(128 / t.block_elems * t.block_bytes));
        std::vector<float> y(128);
        for (int64_t r = 0; r < 16; ++r) {
          encode_grid_row(q, r, t.name, row.data(), "test");
          t.to_f32(row.data(), y.data(), 128);
          for (int64_t c = 0; c < 128; ++c) REQUIRE(y[(size_t)c] == want.f32()[r * 128 + c]);
        }
      }
  }
  CHECK(dtype_by_name("Q8_0")->grid.max_bits(true) == 8);
  CHECK(dtype_by_name("Q8_0")->grid.max_bits(false) == 7);
  CHECK(dtype_by_name("Q4_0")->grid.max_bits(true) == 4);
  CHECK(dtype_by_name("Q4_0")->grid.max_bits(false) == 3);
  CHECK(dtype_by_name("Q4_1")->grid.max_bits(false) == 4);
  CHECK(dtype_by_name("Q5_0")->grid.max_bits(true) == 5);
  CHECK(dtype_by_name("Q5_0")->grid.max_bits(false) == 4);
  CHECK(dtype_by_name("Q5_1")->grid.max_bits(false) == 5);
  CHECK(dtype_by_name("Q5_1")->grid.max_bits(true) == 5);
}

// ---- the exporter table: check_save refuses what save_model refuses ----------------------------

static void quantize_all(Model& m, const GridPlan& p) {
  GridSpec s;
  s.bits = p.bits;
  s.sym = p.sym;
  s.group = p.group;
  s.f16_scales = p.f16_scales;
  for (int b = 0; b < m.n_blocks(); ++b)
    for (Linear& l : m.block_mut(b).linears) {
      auto q = std::make_shared<QuantizedLinear>(quantize_to_grid(l.weight, grid_fit(l.weight, s)));
      l.weight = q->dequantize();
      l.quant = q;
    }
}

TEST_CASE("check_save on a grid plan and on the model refuses exactly what save_model refuses") {
  const Model base = load_llama2c(kStories);
  struct Target {
    const char* format;
    const char* dtype;
  };
  const Target targets[] = {{"gguf", "Q8_0"}, {"gguf", "Q4_0"}, {"gguf", "q4_1"}, {"gguf", "Q5_0"}, {"gguf", "Q5_1"},
                            {"gguf", ""},     {"gptq", ""},     {"hf", "BF16"},   {"qforge", ""}};
  int cases = 0, refused = 0, data_dependent = 0, shape_dependent = 0;
  for (int bits : {2, 3, 4, 5, 7, 8})
    for (int sym = 0; sym < 2; ++sym)
      for (int64_t group : {(int64_t)-1, (int64_t)32, (int64_t)48, (int64_t)64})
        for (int f16 = 0; f16 < 2; ++f16) {
          GridPlan p;
          p.bits = bits;
          p.sym = sym;
          p.group = group;
          p.f16_scales = f16;
          Model m = base.clone();
          quantize_all(m, p);
          for (const Target& t : targets) {
            const std::string fmt = t.format, dt = t.dtype;
            CAPTURE(fmt);
            CAPTURE(dt);
            CAPTURE(bits);
            CAPTURE(sym);
            CAPTURE(group);
            CAPTURE(f16);
            const SaveOptions o{t.format, t.dtype};
            const std::string path = tmpdir() + "/agree_" + std::to_string(cases);
            const SaveRefusal by_plan = check_save(o, &p);
            const SaveRefusal by_model = check_save(o, nullptr, &m, nullptr, path);
            bool saved = true;
            std::string why;
            try {
              save_model(m, nullptr, path, o);
            } catch (const Error& e) {
              saved = false;
              why = e.what();
            }
            CAPTURE(by_plan.message);
            CAPTURE(why);
            // The plan never refuses what save stores; save refuses what the plan passes only for
            // what options cannot tell: a GPTQ v1 zero point of 0 (an asymmetric group whose
            // weights are all >= 0), data-dependent, and 3-bit GPTQ codes of a linear whose
            // widths are not multiples of 32 (stories260K's 172), shape-dependent.
            if (saved) CHECK(by_plan.ok());
            if (!saved && by_plan.ok()) {
              CHECK(fmt == "gptq");
              const bool zero0 = why.find("zero point 0 at row") != std::string::npos;
              const bool width3 = bits == 3 && why.find("3-bit codes of a [") != std::string::npos;
              CHECK((zero0 ? !sym : width3));
              if (zero0) ++data_dependent;
              else ++shape_dependent;
            }
            CHECK(by_model.ok() == saved);
            if (!saved) CHECK(by_model.message == why);  // the same check, the same message
            std::filesystem::remove_all(path);
            ++cases;
            refused += !saved;
          }
        }
  CHECK(cases == 6 * 2 * 4 * 2 * 9);
  CHECK(refused > 100);  // the cases are not all one way
  CHECK(refused < cases - 100);
  CHECK(data_dependent < 20);  // the exception stays an exception (8 with stories260K: group 48's 16-column tail)
  MESSAGE(shape_dependent, " 3-bit GPTQ cases refused for stories260K's 172-wide linears");
  CHECK(shape_dependent > 0);
}

TEST_CASE("check_save: format and dtype refusals name the option, outliers/allocations/float zeros refuse code formats") {
  GridPlan p;
  p.bits = 4;
  p.group = 32;
  p.sym = true;
  p.f16_scales = true;
  CHECK(check_save({"gguf", "Q4_0"}, &p).ok());
  CHECK(check_save({"gguf", "q4_0"}, &p).ok());
  SaveRefusal r = check_save({"onnx", ""}, &p);
  CHECK(r.option == "save_format");
  CHECK(r.message == "unknown format 'onnx' (expected hf, gguf, gptq, compressed-tensors or qforge)");
  r = check_save({"gguf", "Q8_K"}, &p);
  CHECK(r.option == "save_dtype");
  CHECK(r.message == "'Q8_K' is not a gguf dtype (F16, F32, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0)");
  // A K type needs K-quant grids of that type (ktype), and a K grid needs its own K dtype.
  r = check_save({"gguf", "Q4_K"}, &p);
  CHECK(r.option == "save_format");
  CHECK(r.message == "gguf Q4_K cannot store this run's model: its Q4_K super-blocks need ktype=Q4_K");
  GridPlan pk;
  pk.ktype = "Q4_K";
  CHECK(check_save({"gguf", "Q4_K"}, &pk).ok());
  CHECK(check_save({"gguf", "Q5_K"}, &pk).message == "gguf Q5_K cannot store this run's model: its Q5_K super-blocks need ktype=Q5_K, got ktype=Q4_K");
  CHECK(check_save({"gguf", "Q4_0"}, &pk).message == "gguf Q4_0 cannot store this run's model: a Q4_K grid is stored by gguf Q4_K (save_dtype=Q4_K)");
  CHECK(check_save({"gptq", ""}, &pk).message == "gptq cannot store this run's model: a Q4_K grid is stored by gguf Q4_K only (or save_format=qforge)");
  pk.outliers = true;
  CHECK(check_save({"gguf", "Q4_K"}, &pk).message == "gguf Q4_K cannot store this run's model: it stores no sparse outliers (use ratio=0 or save_format=qforge)");
  r = check_save({"hf", "q4_0"}, nullptr);
  CHECK(r.message == "'q4_0' is not a hf dtype (BF16, F16, F32)");
  r = check_save({"gptq", "F16"}, nullptr);
  CHECK(r.option == "save_dtype");
  CHECK(r.message == "format 'gptq' takes no dtype, got 'F16'");
  GridPlan o = p;
  o.outliers = true;
  CHECK(check_save({"gguf", "Q8_0"}, &o).message == "gguf Q8_0 cannot store this run's model: it stores no sparse outliers (use ratio=0 or save_format=qforge)");
  CHECK(check_save({"gguf", "F16"}, &o).ok());
  CHECK(check_save({"hf", ""}, &o).ok());
  CHECK(check_save({"qforge", ""}, &o).ok());
  o = p;
  o.allocated = true;
  CHECK(check_save({"gptq", ""}, &o).message.find("the CVXQ allocation") != std::string::npos);
  o = p;
  o.float_zero = true;
  CHECK(check_save({"gptq", ""}, &o).message.find("decoupleQ's float zero points") != std::string::npos);
  o = p;
  o.bits = 5;
  CHECK(check_save({"gptq", ""}, &o).message == "gptq cannot store this run's model: GPTQ packs 2, 3, 4 or 8 bits, got bits=5");
  o = p;
  o.sym = false;
  CHECK(check_save({"gguf", "Q4_0"}, &o).message.find("Q4_0 is symmetric: pass sym=true (an asymmetric grid exports as Q4_1") != std::string::npos);
  o.bits = 3;  // an asymmetric 3-bit grid's code − zero lies in −7..7: Q4_0 stores it
  CHECK(check_save({"gguf", "Q4_0"}, &o).ok());
  o.bits = 5;  // asymmetric 5-bit: Q5_1's codes; f16_scales keeps 6 mantissa bits so the min −scale·zero is fp16-exact
  CHECK(check_save({"gguf", "Q5_1"}, &o).ok());
  CHECK(check_save({"gguf", "Q5_0"}, &o).message.find("Q5_0 is symmetric: pass sym=true (an asymmetric grid exports as Q5_1") != std::string::npos);
  o.sym = true;
  CHECK(check_save({"gguf", "Q5_1"}, &o).ok());
  CHECK(check_save({"gguf", "Q5_0"}, &o).ok());
  CHECK(check_save({"gguf", "Q4_0"}, &o).message == "gguf Q4_0 cannot store this run's model: Q4_0 holds 4-bit codes, got bits=5 (Q5_0 holds them)");
  o.sym = false;
  o.bits = 8;
  CHECK(check_save({"gguf", "Q8_0"}, &o).message ==
        "gguf Q8_0 cannot store this run's model: Q8_0 holds signed 8-bit codes: an asymmetric grid needs bits <= 7 (or sym=true)");
  // The table drives save_model: every format in it dispatches, unknown ones are refused.
  for (const ExportFormat& f : export_formats()) {
    CHECK(export_format(f.name) == &f);
    if (!f.dtypes.empty()) CHECK(f.takes(f.default_dtype));
    for (const char* d : f.dtypes) CHECK(dtype_by_name(d) != nullptr);
  }
  CHECK(export_format("onnx") == nullptr);
}

// ---- one RoPE permutation ----------------------------------------------------------------------

TEST_CASE("RoPE: rope_pair_rows is the permutation every user applies, rope_half_rows its inverse") {
  const std::vector<int64_t> p = rope_pair_rows(8, 2);
  CHECK(p == std::vector<int64_t>{0, 2, 1, 3, 4, 6, 5, 7});
  const std::vector<int64_t> h = rope_half_rows(6, 1);
  CHECK(h == std::vector<int64_t>{0, 2, 4, 1, 3, 5});
  for (int heads : {1, 2, 3, 4}) {
    const int64_t rows = heads * 6;
    const std::vector<int64_t> a = rope_pair_rows(rows, heads), b = rope_half_rows(rows, heads);
    for (int64_t r = 0; r < rows; ++r) CHECK(a[(size_t)b[(size_t)r]] == r);
    // The tensor functions gather by them.
    std::vector<float> v((size_t)rows);
    for (int64_t r = 0; r < rows; ++r) v[(size_t)r] = (float)r;
    const Tensor t = Tensor::from_data({rows}, v);
    const std::vector<float> pv = rope_pairs_from_halves(t, heads).to_vector(), hv = rope_halves_from_pairs(t, heads).to_vector();
    for (int64_t r = 0; r < rows; ++r) {
      CHECK(pv[(size_t)r] == (float)a[(size_t)r]);
      CHECK(hv[(size_t)r] == (float)b[(size_t)r]);
    }
  }
  CHECK_THROWS_WITH_AS(rope_pair_rows(9, 2), doctest::Contains("not a multiple of 2 heads"), Error);
  CHECK_THROWS_WITH_AS(rope_pair_rows(6, 2), doctest::Contains("head dimension 3 is odd"), Error);
  // The HF exporter's row order of a RoPE-pair model is rope_half_rows.
  const Model m = load_llama2c(kStories);
  REQUIRE(m.cfg.rope_interleaved);
  CHECK(hf_row_order(m, "q", m.cfg.n_heads * m.cfg.head_dim()) == rope_half_rows(m.cfg.n_heads * m.cfg.head_dim(), m.cfg.n_heads));
  CHECK(hf_row_order(m, "k", m.cfg.kv_dim()) == rope_half_rows(m.cfg.kv_dim(), m.cfg.n_kv_heads));
  const std::vector<int64_t> v = hf_row_order(m, "v", m.cfg.kv_dim());
  for (int64_t r = 0; r < (int64_t)v.size(); ++r) CHECK(v[(size_t)r] == r);
}

// ---- model-level tensor names ------------------------------------------------------------------

TEST_CASE("model-level tensors: one row per tensor, GGUF and HF names both ways") {
  REQUIRE(kLlama.tensors.size() == 3);
  CHECK(std::string(kLlama.tensor("tok_emb").gguf) == "token_embd.weight");
  CHECK(std::string(kLlama.tensor("final_norm").gguf) == "output_norm.weight");
  CHECK(std::string(kLlama.tensor("classifier").gguf) == "output.weight");
  for (const ModelTensorSpec& t : kLlama.tensors) {
    CHECK(hf_tensor_name(t.name) == t.hf);
    CHECK(hf_canonical_name(t.hf) == t.name);
  }
  CHECK_THROWS_WITH_AS(kLlama.tensor("lm_head"), doctest::Contains("unknown model tensor 'lm_head'"), Error);
}
