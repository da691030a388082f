// Multiple-choice task file (JSONL): read_mc_jsonl, then every accepted item's requests built
// with stories260K's tokenizer (what m:multiple_choice does before any forward pass).
#include "eval/multiple_choice.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const qf::Tokenizer tok = qf::Tokenizer::load(std::string(QF_SHARED_DIR) + "/models/stories260K/tok512.bin");
  const std::string p = qf_fuzz::input_file(data, size, "task.jsonl");
  return qf_fuzz::run([&] {
    const std::vector<qf::McItem> items = qf::read_mc_jsonl(p);
    for (const qf::McItem& it : items) {
      qf::check_mc_item(it, "fuzz");
      for (const std::string& c : it.choices) {
        if (qf::utf8_length(c) < 1) qf_fuzz::finding("an accepted choice has no character");
        const qf::LoglikRequest r = it.contexts_form ? qf::mc_request(tok, c, " " + it.continuation) : qf::mc_request(tok, it.context, " " + c);
        if (r.n_cont < 0 || r.n_cont >= (int64_t)r.tokens.size()) qf_fuzz::finding("a request scores every token or fewer than none");
      }
    }
  });
}
