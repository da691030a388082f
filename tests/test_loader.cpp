// llama2.c loader: the real model's header and weights, and rejection of bad files with a
// message naming the file (and never a huge allocation from a lying header).
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/io.h"
#include "formats/loader.h"
#include "formats/loader_llama2c.h"

using namespace qf;
namespace fs = std::filesystem;

static const std::string kShared = QF_SHARED_DIR;
static const std::string kModel = kShared + "/models/stories260K/stories260K.bin";

static std::string tmpdir() {
  static std::string d = [] {
    auto p = fs::temp_directory_path() / ("qf_loader_" + std::to_string(getpid()));
    fs::create_directories(p);
    return p.string();
  }();
  return d;
}

static std::string write(const std::string& name, const std::string& bytes) {
  std::string p = tmpdir() + "/" + name;
  std::ofstream(p, std::ios::binary).write(bytes.data(), (std::streamsize)bytes.size());
  return p;
}

static std::string header(std::initializer_list<int32_t> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

TEST_CASE("stories260K loads with the documented config and weights") {
  Model m = load_llama2c(kModel);
  CHECK(m.cfg.dim == 64);
  CHECK(m.cfg.hidden_dim == 172);
  CHECK(m.cfg.n_layers == 5);
  CHECK(m.cfg.n_heads == 8);
  CHECK(m.cfg.n_kv_heads == 4);
  CHECK(m.cfg.vocab_size == 512);
  CHECK(m.cfg.seq_len == 512);
  CHECK(m.cfg.tied_classifier);
  CHECK(m.classifier.same_storage(m.tok_emb));
  REQUIRE(m.blocks.size() == 5);
  const Block& b = m.blocks[2];
  CHECK(b.linear("q").weight.shape() == Shape{64, 64});
  CHECK(b.linear("k").weight.shape() == Shape{32, 64});
  CHECK(b.linear("gate").weight.shape() == Shape{172, 64});
  CHECK(b.linear("down").weight.shape() == Shape{64, 172});
  CHECK(&b.linear("w2") == &b.linear("down"));
  CHECK(&b.linear("w3") == &b.linear("up"));
  CHECK(b.linear("o").input == Site::AttnOut);
  CHECK_THROWS_WITH_AS(b.linear("qkv"), doctest::Contains("unknown linear 'qkv'"), Error);
  // parameter count: 512·64 + 5·(2·64 + 64·64·2 + 2·32·64 + 3·172·64) + 64
  CHECK(m.n_params() == 512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64) + 64);
  // spot-check a weight against the raw file: wk of layer 1, row 3, col 7
  std::string raw = read_file(kModel);
  const int64_t off = 28 + 4 * (512 * 64 + 5 * 64 + 5 * 64 * 64 + 1 * 32 * 64 + 3 * 64 + 7);
  float v;
  std::memcpy(&v, raw.data() + off, 4);
  CHECK(m.blocks[1].linear("k").weight.get({3, 7}) == v);
}

TEST_CASE("directory resolution finds checkpoint and tokenizer") {
  ModelFiles f = resolve_model_files(kShared + "/models/stories260K");
  CHECK(f.model.find("stories260K.bin") != std::string::npos);
  CHECK(f.tokenizer.find("tok512.bin") != std::string::npos);
  CHECK_THROWS_WITH_AS(resolve_model_files(tmpdir() + "/nope"), doctest::Contains("nope' does not exist"), Error);
  fs::create_directories(tmpdir() + "/emptydir");
  CHECK_THROWS_WITH_AS(resolve_model_files(tmpdir() + "/emptydir"), doctest::Contains("holds no checkpoint"), Error);
}

TEST_CASE("bad checkpoints are rejected with the file named") {
  std::string good = read_file(kModel);
  auto expect = [](const std::string& path, const char* what) {
    CHECK_THROWS_WITH_AS(load_llama2c(path), doctest::Contains(path.c_str()), Error);
    CHECK_THROWS_WITH_AS(load_llama2c(path), doctest::Contains(what), Error);
  };
  expect(write("empty.bin", ""), "empty");
  expect(write("short_header.bin", good.substr(0, 20)), "truncated header");
  expect(write("truncated.bin", good.substr(0, good.size() / 2)), "truncated");
  expect(write("trailing.bin", good + "xxxx"), "trailing bytes");
  // a lying header: absurd sizes must fail validation before any allocation
  expect(write("huge.bin", header({1 << 30, 172, 5, 8, 4, 512, 512}) + std::string(100, '\0')), "'dim'");
  expect(write("huge2.bin", header({65536, 262144, 1024, 64, 64, 512, 512}) + std::string(100, '\0')), "truncated");
  expect(write("heads.bin", header({64, 172, 5, 7, 7, 512, 512}) + std::string(100, '\0')), "n_heads");
  expect(write("kv.bin", header({64, 172, 5, 8, 3, 512, 512}) + std::string(100, '\0')), "n_kv_heads");
  expect(write("neg.bin", header({64, -172, 5, 8, 4, 512, 512}) + std::string(100, '\0')), "hidden_dim");
  expect(write("text.bin", std::string("this is a text file, not a model checkpoint at all\n")), "");
  expect(write("magic.bin", header({0x616b3432, 1, 64, 172, 5, 8, 4}) + std::string(300, '\0')), "ak42");
  std::string nan = good;
  const float qnan = std::nanf("");
  std::memcpy(nan.data() + 28 + 4 * 1000, &qnan, 4);
  expect(write("nan.bin", nan), "non-finite weight");
  CHECK_THROWS_WITH_AS(load_llama2c(tmpdir() + "/missing.bin"), doctest::Contains("missing.bin"), Error);
  CHECK_THROWS_WITH_AS(load_llama2c(tmpdir()), doctest::Contains(tmpdir().c_str()), Error);
}

TEST_CASE("separate classifier (negative vocab size) is loaded untied") {
  std::string good = read_file(kModel);
  int32_t h[7];
  std::memcpy(h, good.data(), 28);
  h[5] = -h[5];
  std::string untied = good;
  std::memcpy(untied.data(), h, 28);
  std::string cls(512 * 64 * 4, '\0');
  for (int i = 0; i < 512 * 64; ++i) {
    float v = 0.001f * (float)(i % 97);
    std::memcpy(cls.data() + 4 * i, &v, 4);
  }
  std::string p = write("untied.bin", untied + cls);
  Model m = load_llama2c(p);
  CHECK(!m.cfg.tied_classifier);
  CHECK(m.classifier.offset() != m.tok_emb.offset());
  CHECK(m.classifier.get({1, 2}) == doctest::Approx(0.001f * (float)((64 + 2) % 97)));
  CHECK(m.n_params() == load_llama2c(kModel).n_params() + 512 * 64);
}

TEST_CASE("atomic write leaves no temp file and replaces the target") {
  std::string p = tmpdir() + "/atomic.txt";
  write_file_atomic(p, "first");
  write_file_atomic(p, "second");
  CHECK(read_file(p) == "second");
  int tmps = 0;
  for (auto& e : fs::directory_iterator(tmpdir()))
    if (e.path().filename().string().find("atomic.txt.tmp") != std::string::npos) ++tmps;
  CHECK(tmps == 0);
  CHECK_THROWS_WITH_AS(write_file_atomic(tmpdir() + "/no/such/dir/x", "y"), doctest::Contains("cannot write file"), Error);
}
