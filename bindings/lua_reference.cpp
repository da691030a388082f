// qforge — the Lua ReferenceLogits: userdata "qforge.ReferenceLogits" holding recorded reference
// distributions (eval/reference_logits.h). Made by m:reference_logits(...) or
// qf.load_reference(path); passed to m:perplexity{reference = r}.
#include <memory>

#include "core/io.h"
#include "lua_util.h"

namespace qf::lua {

static constexpr const char* kReferenceMT = "qforge.ReferenceLogits";
using RefPtr = std::shared_ptr<const ReferenceLogits>;

void push_reference(lua_State* L, ReferenceLogits r) {
  new_udata<RefPtr>(L, kReferenceMT, std::make_shared<const ReferenceLogits>(std::move(r)));
}

const ReferenceLogits* test_reference(lua_State* L, int idx) {
  auto* p = static_cast<RefPtr*>(luaL_testudata(L, idx, kReferenceMT));
  return p ? p->get() : nullptr;
}

static const ReferenceLogits& check_reference(lua_State* L, int arg, const char* fn) {
  return **static_cast<RefPtr*>(check_udata(L, arg, kReferenceMT, fn));
}

// qf.load_reference(path) -> ReferenceLogits
static int f_load_reference(lua_State* L) {
  push_reference(L, ReferenceLogits::load(check_str(L, 1, "load_reference")));
  return 1;
}

// r:save(path): atomic (temporary file, then rename).
static int r_save(lua_State* L) {
  const ReferenceLogits& r = check_reference(L, 1, "save");
  r.save(check_str(L, 2, "save"));
  return 0;
}

// r:info() -> {form=, dim=, model=, protocol=, protocol_name=, seqlen=, windows=, vocab=, topk=, positions=, tokens=}
static int r_info(lua_State* L) {
  const ReferenceLogits& r = check_reference(L, 1, "info");
  lua_createtable(L, 0, 11);
  set_field(L, "form", std::string(r.hidden_form() ? "hidden" : "topk"));
  set_field(L, "dim", r.dim);
  set_field(L, "model", r.model);
  set_field(L, "protocol", r.protocol);
  set_field(L, "protocol_name", r.protocol_name);
  set_field(L, "seqlen", r.seqlen);
  set_field(L, "windows", r.windows);
  set_field(L, "vocab", r.vocab);
  set_field(L, "topk", r.topk);
  set_field(L, "positions", r.positions());
  set_field(L, "tokens", fingerprint_text(r.tokens_hash));
  return 1;
}

static int r_tostring(lua_State* L) {
  const ReferenceLogits& r = check_reference(L, 1, "__tostring");
  const std::string form = r.hidden_form() ? "full distributions (hidden states, dim " + std::to_string(r.dim) + ")"
                                           : "top-" + std::to_string(r.topk);
  const std::string s = "qforge.ReferenceLogits of " + r.model + ": " + std::to_string(r.positions()) + " positions, " + form +
                        " of " + std::to_string(r.vocab) + ", " + r.protocol_name + "-L" + std::to_string(r.seqlen);
  push_str(L, s);
  return 1;
}

void open_reference(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  register_class(L, kReferenceMT, {{"save", qf_guard<r_save>, 2}, {"info", qf_guard<r_info>, 1}}, udata_gc<RefPtr>,
                 qf_guard<r_tostring>);
  set_funcs(L, mod, {{"load_reference", qf_guard<f_load_reference>, 1}});
}

}  // namespace qf::lua
