#include "loader.h"

#include <dirent.h>

#include <algorithm>

#include "io.h"
#include "loader_llama2c.h"

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

ModelFiles resolve_model_files(const std::string& path) {
  if (!path_exists(path)) fail("model path '", path, "' does not exist");
  ModelFiles f;
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
    size_t slash = path.find_last_of('/');
    f.tokenizer = find_tokenizer(slash == std::string::npos ? "." : path.substr(0, slash));
  }
  return f;
}

Model load_model(const ModelFiles& files) {
  if (files.format != "llama2c") fail("model '", files.model, "': unsupported format '", files.format, "'");
  return load_llama2c(files.model);
}

}  // namespace qf
