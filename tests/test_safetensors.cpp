// safetensors container: writer -> reader round trip of every dtype, rejection of malformed
// files with a message naming the file and the field; HF config.json parsing (architectures,
// required fields, rope_scaling) and a hand-built Qwen2-style sharded directory; RoPE
// frequency scaling against independently computed values.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "scratch_dir.h"
#include "model/forward.h"
#include "core/io.h"
#include "formats/loader.h"
#include "formats/loader_hf.h"
#include "formats/safetensors.h"

using namespace qf;
namespace fs = std::filesystem;
using json = nlohmann::json;

static std::string tmpdir() {
  static const std::string d = qf_test::scratch_dir("safetensors");
  return d;
}

static std::string put(const std::string& name, const std::string& bytes) {
  const std::string p = tmpdir() + "/" + name;
  qf_test::write_bytes(p, bytes);
  return p;
}

// A safetensors file from a literal header and a data buffer (for malformed cases).
static std::string raw_file(const std::string& header, const std::string& data, uint64_t len_override = 0) {
  const uint64_t n = len_override ? len_override : header.size();
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s + header + data;
}

TEST_CASE("safetensors: every dtype round-trips through the writer and the reader") {
  const std::vector<std::string> dtypes = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"};
  std::vector<SafetensorsEntry> entries;
  uint32_t seed = 12345;
  for (size_t k = 0; k < dtypes.size(); ++k) {
    const Shape shape = k % 2 ? Shape{3, (int64_t)k + 1} : Shape{(int64_t)k + 2};
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::string bytes((size_t)(n * safetensors_dtype_size(dtypes[k])), '\0');
    for (char& c : bytes) c = (char)((seed = seed * 1103515245u + 12345u) >> 24);
    if (dtypes[k] == "BOOL")
      for (char& c : bytes) c &= 1;
    SafetensorsEntry e{"t." + dtypes[k], dtypes[k], shape, "", nullptr};
    if (k % 3 == 0) e.produce = [bytes] { return bytes; };  // the producer path
    else e.bytes = bytes;
    entries.push_back(e);
  }
  entries.push_back({"empty", "F32", {0, 4}, "", nullptr});  // zero-size tensors are legal
  const std::string path = tmpdir() + "/all.safetensors";
  safetensors_write(path, entries, {{"format", "pt"}, {"note", "héllo"}});
  SafetensorsFile st = safetensors_open(path);
  CHECK(st.metadata.at("format") == "pt");
  CHECK(st.metadata.at("note") == "héllo");
  REQUIRE(st.tensors.size() == entries.size());
  uint64_t first = UINT64_MAX;
  for (const SafetensorsEntry& e : entries) {
    const TensorSource& t = st.get(e.name);
    first = std::min(first, t.offset);
    CHECK(t.dtype == e.dtype);
    CHECK(t.shape == e.shape);
    const std::string want = e.produce ? e.produce() : e.bytes;
    REQUIRE(t.nbytes == want.size());
    CHECK(std::string((const char*)st.file->data + t.offset, t.nbytes) == want);
  }
  CHECK(first % 8 == 0);  // header padded: data 8-byte aligned
  CHECK(st.find("nope") == nullptr);
  CHECK_THROWS_WITH_AS(st.get("nope"), doctest::Contains("tensor 'nope' is missing"), Error);
  // typed read checks the dtype it is asked for
  CHECK(safetensors_read<int32_t>(st.get("t.I32"), "I32").size() == 3 * 6);
  CHECK_THROWS_WITH_AS(safetensors_read<int32_t>(st.get("t.F32"), "I32"), doctest::Contains("has dtype F32, expected I32"), Error);
  // f32 -> F16/BF16 conversion of the writer helper, and float16 overflow refused
  Tensor t = Tensor::from_data({3}, {1.0f, -2.5f, 0.1f});
  const std::string h = tensor_bytes(t, "F16", "x");
  uint16_t v[3];
  std::memcpy(v, h.data(), 6);
  CHECK(v[0] == 0x3c00);
  CHECK(v[1] == 0xc100);
  CHECK(v[2] == 0x2e66);
  CHECK_THROWS_WITH_AS(tensor_bytes(Tensor::from_data({1}, {70000.f}), "F16", "tensor 'big'"),
                       doctest::Contains("tensor 'big': value 70000 at element 0 overflows float16"), Error);
  // a producer that lies about its size is caught and leaves no file behind
  std::vector<SafetensorsEntry> bad = {{"a", "F32", {2}, "", [] { return std::string(4, '\0'); }}};
  CHECK_THROWS_WITH_AS(safetensors_write(tmpdir() + "/bad.safetensors", bad, {}), doctest::Contains("tensor 'a' produced 4 bytes"), Error);
  CHECK(!path_exists(tmpdir() + "/bad.safetensors"));
}

TEST_CASE("safetensors: malformed files are rejected naming the file and the field") {
  auto rejects = [](const std::string& name, const std::string& bytes, std::initializer_list<const char*> parts) {
    const std::string p = put(name, bytes);
    CAPTURE(name);
    try {
      safetensors_open(p);
      FAIL("accepted ", name);
    } catch (const Error& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find(p) != std::string::npos);
      for (const char* s : parts) CHECK(msg.find(s) != std::string::npos);
    }
  };
  const std::string good_hdr = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  rejects("trunc.safetensors", std::string(5, '\0'), {"truncated"});
  rejects("pasteof.safetensors", raw_file(good_hdr, std::string(8, '\0'), 4096), {"header length 4096 runs past the end"});
  rejects("absurd.safetensors", raw_file(good_hdr, std::string(8, '\0'), 1ull << 40), {"header length", "is absurd"});
  rejects("notjson.safetensors", raw_file("{not json", ""), {"not valid JSON"});
  rejects("array.safetensors", raw_file("[1,2,3]", ""), {"not an object"});
  rejects("past.safetensors", raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')),
          {"tensor 'a'", "data_offsets", "runs past the end of the data"});
  rejects("overlap.safetensors",
          raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   std::string(12, '\0')),
          {"tensor 'b'", "data_offsets", "overlaps"});
  rejects("hole.safetensors",
          raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                   std::string(12, '\0')),
          {"tensor 'b'", "data_offsets", "hole"});
  rejects("size.safetensors", raw_file(R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
          {"tensor 'a'", "data_offsets", "spans 8 bytes", "F16", "needs 6"});
  rejects("dtype.safetensors", raw_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
          {"tensor 'a'", "field 'dtype'", "unsupported value 'Q4'"});
  rejects("noshape.safetensors", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", std::string(8, '\0')),
          {"tensor 'a'", "field 'shape'"});
  rejects("negoff.safetensors", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", std::string(8, '\0')),
          {"tensor 'a'", "field 'data_offsets'"});
  rejects("trailing.safetensors", raw_file(good_hdr, std::string(12, '\0')), {"trailing bytes"});
  rejects("meta.safetensors", raw_file(R"({"__metadata__":{"k":3}})", ""), {"__metadata__.k", "not a string"});
  // huge shapes must not overflow into a small byte count
  rejects("overflow.safetensors",
          raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""), {"tensor 'a'", "shape"});
  // peek never throws
  std::map<std::string, std::string> md;
  CHECK_FALSE(safetensors_peek_metadata(tmpdir() + "/array.safetensors", &md));
  CHECK_FALSE(safetensors_peek_metadata(tmpdir() + "/absent.safetensors", &md));
}

// ---- HF directories built by hand -------------------------------------------------------------

// A tiny Qwen2-style model: dim 8, 2 heads of 4, 1 kv head (GQA), hidden 12, vocab 10, 2 layers,
// q/k/v biases, untied lm_head, rope_theta 1e6; sharded over two files with an index.
static json tiny_config() {
  return {{"architectures", {"Qwen2ForCausalLM"}},
          {"hidden_size", 8},
          {"intermediate_size", 12},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 1},
          {"vocab_size", 10},
          {"max_position_embeddings", 64},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 1000000.0},
          {"rope_scaling", nullptr},
          {"tie_word_embeddings", false},
          {"hidden_act", "silu"},
          {"torch_dtype", "float32"}};
}

static std::vector<float> ramp(int64_t n, float a, float b) {
  std::vector<float> v((size_t)n);
  for (int64_t i = 0; i < n; ++i) v[i] = a * std::sin(b * (float)(i + 1));
  return v;
}

static void write_tiny_hf(const std::string& dir, const json& cfg) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::vector<SafetensorsEntry> s0, s1;
  auto f32 = [](const std::string& n, const Shape& s, float a, float b) {
    int64_t k = 1;
    for (int64_t d : s) k *= d;
    return SafetensorsEntry{n, "F32", s, bytes_of_f32(ramp(k, a, b)), nullptr};
  };
  s0.push_back(f32("model.embed_tokens.weight", {10, 8}, 1.0f, 0.37f));
  s1.push_back(f32("model.norm.weight", {8}, 1.0f, 0.11f));
  s1.push_back(f32("lm_head.weight", {10, 8}, 0.5f, 0.53f));
  for (int l = 0; l < 2; ++l) {
    auto& s = l == 0 ? s0 : s1;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back(f32(p + "input_layernorm.weight", {8}, 1.0f, 0.2f + l));
    s.push_back(f32(p + "post_attention_layernorm.weight", {8}, 1.0f, 0.3f + l));
    s.push_back(f32(p + "self_attn.q_proj.weight", {8, 8}, 0.3f, 0.71f + l));
    s.push_back(f32(p + "self_attn.q_proj.bias", {8}, 0.25f, 1.3f + l));
    s.push_back(f32(p + "self_attn.k_proj.weight", {4, 8}, 0.3f, 0.61f + l));
    s.push_back(f32(p + "self_attn.k_proj.bias", {4}, 0.25f, 1.7f + l));
    s.push_back(f32(p + "self_attn.v_proj.weight", {4, 8}, 0.3f, 0.41f + l));
    s.push_back(f32(p + "self_attn.v_proj.bias", {4}, 0.25f, 1.9f + l));
    s.push_back(f32(p + "self_attn.o_proj.weight", {8, 8}, 0.3f, 0.31f + l));
    s.push_back(f32(p + "mlp.gate_proj.weight", {12, 8}, 0.3f, 0.29f + l));
    s.push_back(f32(p + "mlp.up_proj.weight", {12, 8}, 0.3f, 0.23f + l));
    s.push_back(f32(p + "mlp.down_proj.weight", {8, 12}, 0.3f, 0.19f + l));
    s.push_back(f32(p + "self_attn.rotary_emb.inv_freq", {2}, 1.0f, 1.0f));  // old buffers are ignored
  }
  safetensors_write(dir + "/model-00001-of-00002.safetensors", s0, {{"format", "pt"}});
  safetensors_write(dir + "/model-00002-of-00002.safetensors", s1, {{"format", "pt"}});
  json wm = json::object();
  for (auto& e : s0) wm[e.name] = "model-00001-of-00002.safetensors";
  for (auto& e : s1) wm[e.name] = "model-00002-of-00002.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump();
}

TEST_CASE("hf: a sharded Qwen2 directory with biases, GQA, untied head and rope_theta 1e6") {
  const std::string dir = tmpdir() + "/qwen2";
  write_tiny_hf(dir, tiny_config());
  ModelFiles f = resolve_model_files(dir);
  CHECK(f.format == "hf");
  Model m = load_model(f);
  const ModelConfig& c = m.cfg;
  CHECK(c.dim == 8);
  CHECK(c.hidden_dim == 12);
  CHECK(c.n_layers == 2);
  CHECK(c.n_heads == 2);
  CHECK(c.n_kv_heads == 1);
  CHECK(c.vocab_size == 10);
  CHECK(c.seq_len == 64);
  CHECK(c.norm_eps == 1e-6f);
  CHECK(c.rope_theta == 1e6f);
  CHECK(c.rope_scaling.empty());
  CHECK_FALSE(c.rope_interleaved);
  CHECK_FALSE(c.tied_classifier);
  CHECK_FALSE(m.classifier.same_storage(m.tok_emb));
  CHECK(m.classifier.get({3, 5}) == ramp(80, 0.5f, 0.53f)[3 * 8 + 5]);
  REQUIRE(m.src);
  CHECK(m.src->files.size() == 4);  // config, index, two shards
  const Block& b1 = m.block(1);
  REQUIRE(b1.linear("q").bias.defined());
  REQUIRE(b1.linear("k").bias.defined());
  REQUIRE(b1.linear("v").bias.defined());
  CHECK_FALSE(b1.linear("o").bias.defined());
  CHECK(b1.linear("k").bias.get({2}) == ramp(4, 0.25f, 2.7f)[2]);
  // The bias is applied: q output minus the bias-free output is exactly the bias.
  Tensor x = Tensor::from_data({3, 8}, ramp(24, 1.0f, 0.9f));
  Linear nob = b1.linear("q");
  nob.bias = Tensor();
  const Tensor y = linear_forward(x, b1.linear("q")), y0 = linear_forward(x, nob);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 8; ++j) CHECK(y.get({i, j}) == y0.get({i, j}) + b1.linear("q").bias.get({j}));
  // ... and reaches the logits (zeroing it changes them)
  const std::vector<int32_t> toks = {1, 4, 9, 2, 7, 3};
  const Tensor l1 = forward(m, toks, 1, 6);
  Model m2 = m.clone();
  m2.block_mut(0).linear("q").bias.fill_(0.f);
  const Tensor l2 = forward(m2, toks, 1, 6);
  double diff = 0;
  for (int64_t i = 0; i < l1.numel(); ++i) diff += std::fabs(l1.f32()[i] - l2.f32()[i]);
  CHECK(diff > 1e-4);
  // lazy loading gives the same logits
  Model ml = load_model(f, true);
  const Tensor l3 = forward(ml, toks, 1, 6);
  CHECK(std::memcmp(l1.f32(), l3.f32(), sizeof(float) * l1.numel()) == 0);
}

TEST_CASE("hf: config.json and index errors name the file and the field") {
  auto rejects = [](const std::string& name, const json& cfg, std::initializer_list<const char*> parts) {
    const std::string dir = tmpdir() + "/" + name;
    write_tiny_hf(dir, cfg);
    CAPTURE(name);
    try {
      open_hf(dir);
      FAIL("accepted ", name);
    } catch (const Error& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find(dir + "/config.json") != std::string::npos);
      for (const char* s : parts) CHECK(msg.find(s) != std::string::npos);
    }
  };
  json c = tiny_config();
  c["architectures"] = {"GPTNeoXForCausalLM"};
  rejects("arch", c, {"field 'architectures'", "GPTNeoXForCausalLM"});
  c = tiny_config();
  c.erase("architectures");
  rejects("noarch", c, {"field 'architectures' is missing"});
  c = tiny_config();
  c.erase("hidden_size");
  rejects("nohidden", c, {"field 'hidden_size' is missing"});
  c = tiny_config();
  c["num_attention_heads"] = 3;
  rejects("heads", c, {"field 'num_attention_heads' = 3 does not divide field 'hidden_size' = 8"});
  c = tiny_config();
  c["num_key_value_heads"] = 2;
  c["num_attention_heads"] = 4;
  c["num_key_value_heads"] = 3;
  rejects("kvheads", c, {"field 'num_key_value_heads' = 3"});
  c = tiny_config();
  c["head_dim"] = 3;  // a decoupled head size is read (Qwen3, Gemma: tests/test_archs.cpp); an odd one cannot rotate
  rejects("headdim", c, {"head dimension 3 is odd"});
  c = tiny_config();
  c["hidden_size"] = "8";
  rejects("strhidden", c, {"field 'hidden_size'", "not an integer"});
  c = tiny_config();
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  rejects("yarn", c, {"field 'rope_scaling'", "yarn"});
  c = tiny_config();
  c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  rejects("llama3missing", c, {"field 'rope_scaling.low_freq_factor' is missing"});
  c = tiny_config();
  c["hidden_act"] = "gelu";
  rejects("act", c, {"field 'hidden_act'"});
  c = tiny_config();
  c["quantization_config"] = {{"quant_method", "gptq"}};
  rejects("gptq", c, {"field 'quantization_config'"});

  // tensors: a missing one names the model and the canonical tensor; a shape mismatch both shapes
  const std::string dir = tmpdir() + "/missing";
  write_tiny_hf(dir, tiny_config());
  json idx = json::parse(read_file(dir + "/model.safetensors.index.json"));
  idx["weight_map"]["model.layers.1.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << idx.dump();
  CHECK_THROWS_WITH_AS(open_hf(dir), doctest::Contains("does not hold it"), Error);
  idx["weight_map"]["model.layers.1.mlp.up_proj.weight"] = "../evil.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << idx.dump();
  CHECK_THROWS_WITH_AS(open_hf(dir), doctest::Contains("field 'weight_map.model.layers.1.mlp.up_proj.weight'"), Error);
  c = tiny_config();
  c["intermediate_size"] = 16;
  write_tiny_hf(dir, c);
  CHECK_THROWS_WITH_AS(load_model(resolve_model_files(dir)), doctest::Contains("has shape [12, 8], the config implies [16, 8]"), Error);
  c = tiny_config();
  c["num_hidden_layers"] = 1;
  write_tiny_hf(dir, c);
  CHECK_THROWS_WITH_AS(open_hf(dir), doctest::Contains("is for layer 1 but config.json has num_hidden_layers = 1"), Error);
}

TEST_CASE("hf: rope_scaling is read into the config (linear, llama3, legacy 'type')") {
  const std::string dir = tmpdir() + "/scaled";
  json c = tiny_config();
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  write_tiny_hf(dir, c);
  ModelSource s = open_hf(dir);
  CHECK(s.cfg.rope_scaling == "linear");
  CHECK(s.cfg.rope_factor == 2.f);
  c["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 16}};
  write_tiny_hf(dir, c);
  s = open_hf(dir);
  CHECK(s.cfg.rope_scaling == "llama3");
  CHECK(s.cfg.rope_factor == 8.f);
  CHECK(s.cfg.rope_low_freq_factor == 1.f);
  CHECK(s.cfg.rope_high_freq_factor == 4.f);
  CHECK(s.cfg.rope_orig_ctx == 16);
  c["rope_scaling"] = {{"rope_type", "default"}};
  write_tiny_hf(dir, c);
  CHECK(open_hf(dir).cfg.rope_scaling.empty());
}

TEST_CASE("rope: linear and llama3 frequency scaling match independently computed values") {
  ModelConfig c;
  c.rope_theta = 500000.f;
  const int hd = 64;
  // Reference in double straight from the definitions.
  auto base = [&](int i) { return std::pow(500000.0, -2.0 * i / hd); };
  c.rope_scaling = "linear";
  c.rope_factor = 4.f;
  std::vector<float> f = rope_inv_freq(c, hd);
  REQUIRE(f.size() == 32);
  for (int i = 0; i < 32; ++i) CHECK(f[i] == doctest::Approx(base(i) / 4.0).epsilon(2e-6));

  // llama3 with Llama-3.1's constants on a small original context so all three bands occur:
  // wavelength λ = 2π/f; λ < ctx/high: unchanged; λ > ctx/low: f/factor; else
  // (1 − s)·f/factor + s·f with s = (ctx/λ − low)/(high − low).
  c.rope_scaling = "llama3";
  c.rope_factor = 8.f;
  c.rope_low_freq_factor = 1.f;
  c.rope_high_freq_factor = 4.f;
  c.rope_orig_ctx = 8192;
  f = rope_inv_freq(c, hd);
  int bands[3] = {0, 0, 0};
  for (int i = 0; i < 32; ++i) {
    const double b = base(i), lam = 2 * M_PI / b;
    double want;
    if (lam < 8192.0 / 4.0) {
      want = b;
      bands[0]++;
    } else if (lam > 8192.0 / 1.0) {
      want = b / 8.0;
      bands[2]++;
    } else {
      const double s = (8192.0 / lam - 1.0) / (4.0 - 1.0);
      want = (1 - s) * b / 8.0 + s * b;
      bands[1]++;
    }
    CAPTURE(i);
    CHECK(f[i] == doctest::Approx(want).epsilon(2e-5));
  }
  CHECK(bands[0] > 0);
  CHECK(bands[1] > 0);
  CHECK(bands[2] > 0);
  // Spot values: i = 0 keeps 1.0; the lowest frequency is divided by 8.
  CHECK(f[0] == 1.0f);
  CHECK(f[31] == doctest::Approx(base(31) / 8).epsilon(2e-6));

  // no scaling: bit-identical to the llama2.c f32 formula
  c.rope_scaling = "";
  f = rope_inv_freq(c, hd);
  for (int i = 0; i < 32; ++i) CHECK(f[i] == 1.0f / std::pow(500000.f, (float)(2 * i) / (float)hd));
  c.rope_scaling = "yarn";
  CHECK_THROWS_WITH_AS(rope_inv_freq(c, hd), doctest::Contains("unknown scaling 'yarn'"), Error);

  // the forward applies the scaled frequencies: rope with them == rope at positions / factor
  ModelConfig lin;
  lin.rope_scaling = "linear";
  lin.rope_factor = 2.f;
  Tensor a = Tensor::from_data({4, 8}, ramp(32, 1.f, 0.7f)), b = a.clone();
  rope(a, 1, 8, 4, rope_inv_freq(lin, 8), false);
  for (int p = 0; p < 4; ++p)
    for (int i = 0; i < 4; ++i) {
      const double ang = (p / 2.0) * std::pow(10000.0, -2.0 * i / 8);
      const double x0 = b.get({p, i}), x1 = b.get({p, i + 4});
      CHECK(a.get({p, i}) == doctest::Approx(x0 * std::cos(ang) - x1 * std::sin(ang)).epsilon(1e-5));
      CHECK(a.get({p, i + 4}) == doctest::Approx(x0 * std::sin(ang) + x1 * std::cos(ang)).epsilon(1e-5));
    }
}
