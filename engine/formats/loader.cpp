#include "formats/loader.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/io.h"
#include "formats/loader_gguf.h"
#include "formats/loader_hf.h"
#include "formats/loader_llama2c.h"
#include "formats/loader_qforge.h"

namespace qf {

static std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (!d) fail("cannot open directory '", dir, "'");
  while (dirent* e = readdir(d)) names.push_back(e->d_name);
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

static bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

static bool is_tokenizer_name(const std::string& n) {
  return n == "tokenizer.bin" || (n.rfind("tok", 0) == 0 && ends_with(n, ".bin"));
}

static std::string find_tokenizer(const std::string& dir) {
  for (auto& n : list_dir(dir))
    if (is_tokenizer_name(n)) return dir + "/" + n;
  return "";
}

static std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

static bool has_gguf_magic(const std::string& path) {
  char m[4] = {0, 0, 0, 0};
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  const size_t n = std::fread(m, 1, 4, f);
  std::fclose(f);
  return n == 4 && std::memcmp(m, "GGUF", 4) == 0;
}

ModelFiles resolve_model_files(const std::string& path) {
  if (!path_exists(path)) fail("model path '", path, "' does not exist");
  if (!is_directory(path)) check_regular_file(path);  // never open a FIFO or a device
  ModelFiles f;
  // qforge's own format: a safetensors file whose metadata has qforge_format, whatever its name
  // (save=model.qforge is common), or a directory without config.json holding one as
  // model.safetensors. Its tokenizer travels inside.
  if (!is_directory(path) && is_qforge_file(path)) {
    f.format = "qforge";
    f.model = path;
    return f;
  }
  if (is_directory(path) && !path_exists(path + "/config.json") && is_qforge_file(path + "/model.safetensors")) {
    f.format = "qforge";
    f.model = path + "/model.safetensors";
    return f;
  }
  // Hugging Face directory (or a file inside one). Tokenizer: tokenizer.json, else a llama2.c
  // tokenizer.bin (what save_hf writes for a llama2.c model).
  const std::string hf_dir = is_directory(path) ? path : (ends_with(path, ".safetensors") || ends_with(path, "config.json")) ? parent_dir(path) : "";
  if (!hf_dir.empty() && path_exists(hf_dir + "/config.json")) {
    f.format = "hf";
    f.model = hf_dir;
    if (path_exists(hf_dir + "/tokenizer.json")) f.tokenizer = hf_dir + "/tokenizer.json";
    else if (path_exists(hf_dir + "/tokenizer.bin")) f.tokenizer = hf_dir + "/tokenizer.bin";
    return f;
  }
  // GGUF file, or a directory holding exactly one.
  if (!is_directory(path) && has_gguf_magic(path)) {
    f.format = "gguf";
    f.model = path;
    return f;
  }
  if (is_directory(path)) {
    std::vector<std::string> ggufs;
    for (auto& n : list_dir(path))
      if (ends_with(n, ".gguf")) ggufs.push_back(n);
    if (ggufs.size() == 1) {
      f.format = "gguf";
      f.model = path + "/" + ggufs[0];
      return f;
    }
    if (ggufs.size() > 1) fail("model directory '", path, "' holds several GGUF files: name one");
  }
  if (ends_with(path, ".gguf")) fail("file '", path, "': not a GGUF file (wrong magic, expected 'GGUF')");
  f.format = "llama2c";
  if (is_directory(path)) {
    std::vector<std::string> ckpts;
    for (auto& n : list_dir(path))
      if (ends_with(n, ".bin") && !is_tokenizer_name(n)) ckpts.push_back(n);
    if (ckpts.empty()) fail("model directory '", path, "' holds no checkpoint (*.bin other than the tokenizer)");
    if (ckpts.size() > 1) {
      std::string all;
      for (auto& n : ckpts) all += " " + n;
      fail("model directory '", path, "' holds several checkpoints (", all.substr(1), "): name one file");
    }
    f.model = path + "/" + ckpts[0];
    f.tokenizer = find_tokenizer(path);
  } else {
    f.model = path;
    f.tokenizer = find_tokenizer(parent_dir(path));
  }
  return f;
}

Model load_model(const ModelFiles& files, bool lazy) {
  if (files.format == "llama2c") {
    Model m = load_llama2c(files.model);  // small by construction: always converted eagerly
    m.format = "llama2c";
    return m;
  }
  if (files.format == "qforge") return load_qforge(files.model);  // always eager: codes are rebuilt at load
  std::shared_ptr<ModelSource> src;
  if (files.format == "hf") src = std::make_shared<ModelSource>(open_hf(files.model));
  else if (files.format == "gguf") src = std::make_shared<ModelSource>(open_gguf(files.model));
  else fail("model '", files.model, "': unsupported format '", files.format, "'");
  return assemble_model(src, lazy);
}

}  // namespace qf
