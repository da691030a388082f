// Writing and reading files: the atomic directory commit keeps the old or the new directory at
// every step (also when killed mid-commit), stale temporaries of killed writers are removed on
// the next write, failed writes leave no temporary, non-regular files are refused without
// blocking, and save_model refuses non-finite values anywhere before writing.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "scratch_dir.h"
#include "formats/export.h"
#include "quant/grid.h"
#include "core/io.h"
#include "formats/loader.h"
#include "formats/safetensors.h"
#include "core/mapped_file.h"
#include "tiny_model.h"

using namespace qf;
namespace fs = std::filesystem;

static std::string tmpdir() {
  static const std::string d = qf_test::scratch_dir("files");
  return d;
}

static std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

static void put(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// Entries of tmpdir() whose name starts with `prefix`.
static int count_prefix(const std::string& prefix) {
  int n = 0;
  for (auto& e : fs::directory_iterator(tmpdir()))
    if (e.path().filename().string().rfind(prefix, 0) == 0) ++n;
  return n;
}

// A pid that is certainly not running: a child that has exited and been reaped.
static pid_t dead_pid() {
  pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, nullptr, 0);
  return p;
}

TEST_CASE("AtomicDir: the destination holds the old or the new directory at every step") {
  const std::string dest = tmpdir() + "/exported";
  {  // first write: a plain rename
    AtomicDir d(dest);
    put(d.tmp() + "/marker", "old");
    std::vector<std::string> steps;
    d.on_step = [&](const char* s) {
      steps.push_back(s);
      CHECK(slurp(dest + "/marker") == "old");
    };
    d.commit();
    CHECK(steps == std::vector<std::string>{"renamed"});
  }
  // Over an existing directory: at every observed step dest is complete (old or new).
  AtomicDir d(dest);
  put(d.tmp() + "/marker", "new");
  std::vector<std::string> steps;
  d.on_step = [&](const char* s) {
    steps.push_back(s);
    const std::string m = slurp(dest + "/marker");
    CHECK_MESSAGE((m == "old" || m == "new"), "after step ", s, " dest holds '", m, "'");
  };
  d.commit();
  CHECK(steps == std::vector<std::string>{"exchanged", "removed old"});  // one atomic swap
  CHECK(slurp(dest + "/marker") == "new");
  CHECK(count_prefix("exported.") == 0);  // neither the temporary nor the old copy remains
}

TEST_CASE("AtomicDir: killed mid-commit (SIGKILL) leaves a complete destination; the stale temporary goes on the next write") {
  const std::string dest = tmpdir() + "/killed";
  for (const char* kill_at : std::initializer_list<const char*>{"exchanged", nullptr}) {
    {
      AtomicDir d(dest);
      put(d.tmp() + "/marker", "old");
      d.commit();
    }
    pid_t child = fork();
    if (child == 0) {  // never returns into doctest: SIGKILL, or _exit on any error
      try {
        AtomicDir d(dest);
        put(d.tmp() + "/marker", "new");
        put(d.tmp() + "/big", std::string(1 << 16, 'x'));
        if (!kill_at) raise(SIGKILL);  // killed while writing, before the commit
        d.on_step = [&](const char* s) {
          if (std::string(s) == kill_at) raise(SIGKILL);  // killed between the swap and the cleanup
        };
        d.commit();
      } catch (...) {
      }
      _exit(3);
    }
    int status = 0;
    waitpid(child, &status, 0);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    const std::string stale = dest + ".tmp." + std::to_string(child);
    CHECK(fs::is_directory(stale));  // the killed writer's temporary stays behind ...
    CHECK(slurp(dest + "/marker") == (kill_at ? "new" : "old"));  // ... but dest is complete
    // A live process's temporary is never touched (pid 1 always runs).
    const std::string live = dest + ".tmp.1";
    fs::create_directories(live);
    AtomicDir next(dest);  // the next write of the same destination removes the stale one
    CHECK(!fs::exists(stale));
    CHECK(fs::is_directory(live));
    fs::remove_all(live);
    put(next.tmp() + "/marker", "next");
    next.commit();
    CHECK(slurp(dest + "/marker") == "next");
    CHECK(count_prefix("killed.") == 0);
  }
}

TEST_CASE("single files: stale temporaries are removed, a failed write leaves none") {
  const std::string p = tmpdir() + "/single.json";
  const std::string stale = p + ".tmp." + std::to_string(dead_pid());
  const std::string stale_old = p + ".old." + std::to_string(dead_pid());
  put(stale, "half a file");
  put(stale_old, "x");
  put(p + ".tmp.notapid", "kept");
  put(p + "x.tmp.1", "other file's");
  write_file_atomic(p, "content");
  CHECK(slurp(p) == "content");
  CHECK(!fs::exists(stale));
  CHECK(!fs::exists(stale_old));
  CHECK(fs::exists(p + ".tmp.notapid"));  // not a temporary of ours
  CHECK(fs::exists(p + "x.tmp.1"));
  fs::remove(p + ".tmp.notapid");
  fs::remove(p + "x.tmp.1");

  put(stale, "again");
  { AtomicFile f(p); }  // the streaming writer cleans up too; uncommitted, it removes its own
  CHECK(!fs::exists(stale));
  CHECK(count_prefix("single.json.") == 0);
  CHECK(slurp(p) == "content");

  // The rename fails (a non-empty directory is in the way): the temporary is removed.
  const std::string d = tmpdir() + "/adir";
  fs::create_directories(d + "/inside");
  CHECK_THROWS_WITH_AS(write_file_atomic(d, "x"), doctest::Contains("cannot rename"), Error);
  CHECK(count_prefix("adir.") == 0);
  {
    AtomicFile f(d);
    f.write("x");
    CHECK_THROWS_WITH_AS(f.commit(), doctest::Contains("cannot rename"), Error);
  }
  CHECK(count_prefix("adir.") == 0);
}

TEST_CASE("reading refuses FIFOs, devices and directories without blocking, naming the path") {
  const std::string fifo = tmpdir() + "/pipe";
  REQUIRE(mkfifo(fifo.c_str(), 0644) == 0);  // no writer: an open() without O_NONBLOCK blocks forever
  const std::string what = "'" + fifo + "' is a FIFO (named pipe), expected a regular file";
  CHECK_THROWS_WITH_AS(read_file(fifo), doctest::Contains(what.c_str()), Error);
  CHECK_THROWS_WITH_AS(file_size(fifo), doctest::Contains(what.c_str()), Error);
  CHECK_THROWS_WITH_AS(file_fingerprint(fifo), doctest::Contains(what.c_str()), Error);
  CHECK_THROWS_WITH_AS(MappedFile::open(fifo), doctest::Contains(what.c_str()), Error);
  CHECK_THROWS_WITH_AS(resolve_model_files(fifo), doctest::Contains(what.c_str()), Error);
  CHECK_THROWS_WITH_AS(read_file("/dev/zero"), doctest::Contains("'/dev/zero' is a character device, expected a regular file"), Error);
  CHECK_THROWS_WITH_AS(MappedFile::open("/dev/null"), doctest::Contains("'/dev/null' is a character device"), Error);
  CHECK_THROWS_WITH_AS(read_file(tmpdir()), doctest::Contains("is a directory, expected a file"), Error);
  CHECK_THROWS_WITH_AS(read_file(tmpdir() + "/none"), doctest::Contains(("cannot open file '" + tmpdir() + "/none'").c_str()), Error);
  const std::string p = tmpdir() + "/ten";
  put(p, "0123456789");
  CHECK(read_file(p) == "0123456789");
  CHECK(read_file(p, 10) == "0123456789");
  CHECK_THROWS_WITH_AS(read_file(p, 9), doctest::Contains("holds more than 9 bytes"), Error);
}

// A tiny model whose block-2 linear 'v' carries codes + grid (+ outliers), as a solver leaves it.
static Model quantized_tiny() {
  Model m = test::tiny_model(5);
  Linear& l = m.blocks[1].linear("v");
  GridSpec spec;
  spec.bits = 4;
  spec.group = 8;
  auto q = std::make_shared<QuantizedLinear>(quantize_to_grid(l.weight, grid_fit(l.weight, spec)));
  q->outliers.row = {1};
  q->outliers.col = {3};
  q->outliers.val = {0.25f};
  l.weight = q->dequantize();
  l.quant = q;
  return m;
}

TEST_CASE("save_model refuses non-finite values anywhere, 1-based, before writing a byte") {
  const std::string dir = tmpdir() + "/save";
  fs::create_directories(dir);
  {  // the finite model saves in every format that takes it
    Model m = quantized_tiny();
    save_model(m, nullptr, dir + "/ok.safetensors", {"qforge", ""});
    CHECK(fs::exists(dir + "/ok.safetensors"));
  }
  struct Case {
    const char* what;
    std::function<void(Model&)> poison;
    const char* message;
  };
  const float nan = std::nanf(""), inf = INFINITY;
  const Case cases[] = {
      {"weight", [&](Model& m) { m.blocks[0].linear("o").weight.f32()[2 * 16 + 4] = nan; },
       "save: block 1 linear 'o': weight is NaN at row 3, column 5 (1-based); nothing was written"},
      {"bias", [&](Model& m) { m.blocks[1].linear("up").bias = Tensor::from_data({24}, std::vector<float>(24, 0.f)); m.blocks[1].linear("up").bias.f32()[23] = -inf; },
       "save: block 2 linear 'up': bias is -inf at element 24"},
      {"embedding", [&](Model& m) { m.tok_emb.f32()[16 * 10 + 15] = inf; }, "save: token embedding: weight is +inf at row 11, column 16"},
      {"norm", [&](Model& m) { m.blocks[1].attn_norm.f32()[0] = nan; }, "save: block 2 attn_norm: weight is NaN at element 1"},
      {"final norm", [&](Model& m) { m.final_norm.f32()[15] = nan; }, "save: final norm: weight is NaN at element 16"},
      {"grid scale", [&](Model& m) { const_cast<QuantizedLinear&>(*m.blocks[1].linear("v").quant).grid.scale[3] = nan; },
       "save: block 2 linear 'v': grid scale 4 of 16 is not finite"},
      {"grid zero", [&](Model& m) { const_cast<QuantizedLinear&>(*m.blocks[1].linear("v").quant).grid.zero[0] = inf; },
       "save: block 2 linear 'v': grid zero 1 of 16 is not finite"},
      {"outlier", [&](Model& m) { const_cast<QuantizedLinear&>(*m.blocks[1].linear("v").quant).outliers.val[0] = nan; },
       "save: block 2 linear 'v': outlier 1 at row 2, column 4 (1-based) is not finite"},
  };
  for (const Case& c : cases) {
    for (const char* fmt : {"hf", "gguf", "gptq", "qforge"}) {
      CAPTURE(c.what);
      CAPTURE(fmt);
      Model m = quantized_tiny();
      c.poison(m);
      const std::string out = dir + "/" + fmt + "_" + c.what;
      CHECK_THROWS_WITH_AS(save_model(m, nullptr, out, {fmt, ""}), doctest::Contains(c.message), Error);
      CHECK(!fs::exists(out));
      CHECK(count_prefix("save") == 1);  // tmpdir()/save only: no temporary anywhere
    }
  }
}

// Counts each block's conversions of a lazy model (wraps its loader).
struct CountingBlocks final : BlockLoader {
  std::shared_ptr<const BlockLoader> inner;
  mutable std::vector<int> loads;
  CountingBlocks(std::shared_ptr<const BlockLoader> in, int n) : inner(std::move(in)), loads((size_t)n, 0) {}
  Block load(int i) const override {
    ++loads[(size_t)i];
    return inner->load(i);
  }
  int64_t n_params(int i) const override { return inner->n_params(i); }
  Shape weight_shape(int i, const std::string& l) const override { return inner->weight_shape(i, l); }
  bool has_bias(int i, const std::string& l) const override { return inner->has_bias(i, l); }
};

TEST_CASE("save_model converts each lazy block once; a non-finite value in the file refuses the save, leaving nothing") {
  const std::string dir = tmpdir() + "/lazysave";
  fs::create_directories(dir);
  const std::string src = dir + "/src";
  save_model(test::tiny_model(5, true, true, false, 3), nullptr, src, {"hf", "F32"});
  const std::pair<const char*, const char*> formats[] = {{"hf", "F32"}, {"hf", "F16"}, {"gguf", "F16"}, {"gguf", "F32"}, {"qforge", ""}};
  for (const auto& [fmt, dtype] : formats) {
    CAPTURE(fmt);
    CAPTURE(dtype);
    for (bool touched : {false, true}) {
      CAPTURE(touched);
      Model m = load_model(resolve_model_files(src), true);
      REQUIRE(m.is_lazy());
      auto counter = std::make_shared<CountingBlocks>(m.lazy_blocks, m.n_blocks());
      m.lazy_blocks = counter;
      // A block converted before the save is checked in the pre-pass, without converting it again.
      if (touched) m.block(1);
      save_model(m, nullptr, dir + "/ok_" + fmt + dtype + (touched ? "_touched" : ""), {fmt, dtype});
      CHECK(counter->loads == std::vector<int>{1, 1, 1});
    }
  }
  // A NaN in block 2's up projection, in the file: the writer's conversion refuses it.
  uint64_t at = 0;
  {
    const SafetensorsFile sf = safetensors_open(src + "/model.safetensors");
    const TensorSource& ts = sf.get("model.layers.1.mlp.up_proj.weight");
    REQUIRE(ts.dtype == "F32");
    at = ts.offset + 4 * 7;
  }
  {
    const float nan = std::nanf("");
    std::fstream f(src + "/model.safetensors", std::ios::binary | std::ios::in | std::ios::out);
    f.seekp((std::streamoff)at);
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  for (const auto& [fmt, dtype] : formats) {
    CAPTURE(fmt);
    CAPTURE(dtype);
    const Model m = load_model(resolve_model_files(src), true);
    const std::string out = dir + "/bad_" + fmt + dtype;
    CHECK_THROWS_WITH_AS(save_model(m, nullptr, out, {fmt, dtype}),
                         doctest::Contains("tensor 'model.layers.1.mlp.up_proj.weight' holds a non-finite value at element 7"), Error);
    CHECK(!fs::exists(out));
    int left = 0;  // no temporary either
    for (auto& e : fs::directory_iterator(dir)) left += e.path().filename().string().rfind("bad_", 0) == 0;
    CHECK(left == 0);
  }
}
