// qforge — zero-shot multiple choice from Lua (engine/eval/multiple_choice.h):
// m:multiple_choice(path_or_items [, {max_items=, delimiter=}]) (a qforge.Model method, registered
// in lua_model.cpp) and qf.read_multiple_choice(path [, {max_items=}]).
//
// In Lua every index is 1-based (label, pred, pred_norm); the JSONL files keep lm-eval's
// 0-based label.
#include <cstdio>

#include "eval/multiple_choice.h"
#include "lua_util.h"
#include "runner.h"

namespace qf::lua {

static const char* kItemFields = "context, choices, label; or contexts, continuation, label";

// The string field `key` of the table at `t` ("" with *present = false when absent).
static std::string item_string(lua_State* L, int t, const char* key, const std::string& where, bool* present) {
  lua_pushstring(L, key);
  const int ty = lua_rawget(L, t);
  *present = ty != LUA_TNIL;
  std::string s;
  if (ty == LUA_TSTRING) {
    size_t n = 0;
    const char* p = lua_tolstring(L, -1, &n);
    s.assign(p, n);
  }
  const char* tn = type_name(L, -1);
  lua_pop(L, 1);
  if (*present && ty != LUA_TSTRING) fail(where, ": field '", key, "' must be a string, got ", tn);
  return s;
}

// Items from a Lua list {{context=, choices={...}, label=}, ...} (label 1-based).
static std::vector<McItem> items_from_table(lua_State* L, int idx, const char* fn, int64_t max_items) {
  const int t = lua_absindex(L, idx);
  const lua_Integer n = (lua_Integer)lua_rawlen(L, t);
  if (n == 0) fail(fn, ": the items table is empty or not a list (expected {{context = ..., choices = {...}, label = 1}, ...})");
  const lua_Integer take = max_items > 0 && max_items < n ? (lua_Integer)max_items : n;
  std::vector<McItem> items;
  items.reserve((size_t)take);
  need_stack(L, 4);
  for (lua_Integer i = 1; i <= take; ++i) {
    const std::string where = std::string(fn) + ": items[" + std::to_string(i) + "]";
    lua_rawgeti(L, t, i);
    const int it_idx = lua_gettop(L);
    if (lua_type(L, it_idx) != LUA_TTABLE) {
      const char* tn = type_name(L, it_idx);
      lua_pop(L, 1);
      fail(where, " must be a table {context = ..., choices = {...}, label = ...}, got ", tn);
    }
    lua_pushnil(L);
    while (lua_next(L, it_idx)) {
      lua_pop(L, 1);
      const bool str = lua_type(L, -1) == LUA_TSTRING;
      const std::string k = str ? lua_tostring(L, -1) : std::string("(") + type_name(L, -1) + " key)";
      if (!(str && (k == "context" || k == "choices" || k == "label" || k == "contexts" || k == "continuation"))) {
        lua_pop(L, 2);
        fail(where, ": unknown field '", k, "' (known: ", kItemFields, ")");
      }
    }
    McItem it;
    bool has_ctx = false, has_ctxs = false, has_cont = false;
    it.context = item_string(L, it_idx, "context", where, &has_ctx);
    it.continuation = item_string(L, it_idx, "continuation", where, &has_cont);
    lua_pushstring(L, "contexts");
    has_ctxs = lua_rawget(L, it_idx) != LUA_TNIL;
    lua_pop(L, 1);
    if (has_ctx && has_ctxs) { lua_pop(L, 1); fail(where, ": fields 'context' and 'contexts' together (one item is one form)"); }
    it.contexts_form = has_ctxs;
    if (it.contexts_form && !has_cont) { lua_pop(L, 1); fail(where, ": field 'continuation' is missing"); }
    if (!it.contexts_form && has_cont) { lua_pop(L, 1); fail(where, ": field 'continuation' belongs with 'contexts', not 'context'"); }
    if (!it.contexts_form && !has_ctx) { lua_pop(L, 1); fail(where, ": field 'context' is missing"); }
    const char* f = it.contexts_form ? "contexts" : "choices";
    if (it.contexts_form) {
      lua_pushstring(L, "choices");
      const bool both = lua_rawget(L, it_idx) != LUA_TNIL;
      lua_pop(L, 1);
      if (both) { lua_pop(L, 1); fail(where, ": fields 'contexts' and 'choices' together (one item is one form)"); }
    }
    lua_pushstring(L, f);
    if (lua_rawget(L, it_idx) != LUA_TTABLE) {
      const bool absent = lua_isnil(L, -1);
      const char* tn = type_name(L, -1);
      lua_pop(L, 2);
      if (absent) fail(where, ": field '", f, "' is missing");
      fail(where, ": field '", f, "' must be a list of strings, got ", tn);
    }
    const int c_idx = lua_gettop(L);
    const lua_Integer nc = (lua_Integer)lua_rawlen(L, c_idx);
    if (nc > kMcMaxChoices) {
      lua_pop(L, 2);
      fail(where, ": field '", f, "' has ", (int64_t)nc, " entries, more than the limit of ", kMcMaxChoices);
    }
    for (lua_Integer c = 1; c <= nc; ++c) {
      lua_rawgeti(L, c_idx, c);
      if (lua_type(L, -1) != LUA_TSTRING) {
        const char* tn = type_name(L, -1);
        lua_pop(L, 3);
        fail(where, ": field '", f, "[", (int64_t)c, "]' must be a string, got ", tn);
      }
      size_t len = 0;
      const char* p = lua_tolstring(L, -1, &len);
      it.choices.emplace_back(p, len);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);  // the options list
    lua_pushstring(L, "label");
    const int lt = lua_rawget(L, it_idx);
    int ok = 0;
    const lua_Integer lab = lt == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
    const char* ltn = type_name(L, -1);
    lua_pop(L, 2);  // label, item
    if (lt == LUA_TNIL) fail(where, ": field 'label' is missing");
    if (!ok) fail(where, ": field 'label' must be an integer (1-based index into '", f, "'), got ", ltn);
    if ((lab < 1 || lab > nc) && nc >= 2)  // (fewer than 2 options: check_mc_item says so first)
      fail(where, ": field 'label': ", (int64_t)lab, " is out of range for ", (int64_t)nc, " options (1..", (int64_t)nc, ")");
    it.label = lab >= 1 && lab <= nc ? (int)(lab - 1) : 0;
    check_mc_item(it, where, true);
    items.push_back(std::move(it));
  }
  return items;
}

static void push_item(lua_State* L, const McItem& it) {
  lua_createtable(L, 0, 3);
  if (it.contexts_form) set_field(L, "continuation", it.continuation);
  else set_field(L, "context", it.context);
  lua_createtable(L, (int)it.choices.size(), 0);
  for (size_t c = 0; c < it.choices.size(); ++c) {
    push_str(L, it.choices[c]);
    lua_rawseti(L, -2, (lua_Integer)c + 1);
  }
  lua_setfield(L, -2, it.contexts_form ? "contexts" : "choices");
  set_field(L, "label", (int64_t)it.label + 1);
}

// qf.read_multiple_choice(path [, {max_items=}]) -> the items as m:multiple_choice takes them (label 1-based)
static int f_read_multiple_choice(lua_State* L) {
  const char* fn = "read_multiple_choice";
  const std::string path = check_str(L, 1, fn);
  check_opts(L, 2, fn, {"max_items"});
  const int64_t max_items = opt_field_int(L, 2, "max_items", fn, 0);
  if (max_items < 0) fail(fn, ": max_items must be >= 0 (0 = all), got ", max_items);
  const std::vector<McItem> items = read_mc_jsonl(path, max_items);
  if (RunContext* ctx = run_context(L)) ctx->note_input(path);
  lua_createtable(L, (int)items.size(), 0);
  need_stack(L, 6);
  for (size_t i = 0; i < items.size(); ++i) {
    push_item(L, items[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

// m:multiple_choice(path_or_items [, {max_items=, delimiter=}])
int model_multiple_choice(lua_State* L) {
  const char* fn = "multiple_choice";
  const LModel& lm = check_model(L, 1, fn);
  check_opts(L, 3, fn, {"max_items", "delimiter"});
  McOptions o;
  o.max_items = opt_field_int(L, 3, "max_items", fn, 0);
  if (o.max_items < 0) fail(fn, ": max_items must be >= 0 (0 = all), got ", o.max_items);
  o.delimiter = opt_field_str(L, 3, "delimiter", fn, " ");
  if (!lm.tok) fail(fn, ": model '", lm.m->source, "' has no tokenizer (pass {tokenizer = path} to qf.load_model)");
  std::vector<McItem> items;
  RunContext* ctx = run_context(L);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const std::string path = check_str(L, 2, fn);
    items = read_mc_jsonl(path, o.max_items);
    if (ctx) ctx->note_input(path);
  } else if (lua_type(L, 2) == LUA_TTABLE) {
    items = items_from_table(L, 2, fn, o.max_items);
  } else {
    type_error(L, 2, fn, "path of a JSONL task file or table of items");
  }

  double last = -1;
  auto progress = [ctx, &last](int64_t done, int64_t total, double secs) {
    // quiet for runs under 2 s; then every 2 s and at the end
    const bool due = last < 0 ? secs >= 2.0 : (secs - last >= 2.0 || done == total);
    if (!due) return;
    last = secs;
    const double eta = done > 0 ? secs / (double)done * (double)(total - done) : 0;
    std::fprintf(stderr, "multiple_choice: request %lld/%lld  elapsed %.1fs  ETA %.1fs\n", (long long)done,
                 (long long)total, secs, eta);
    if (ctx) {
      try {
        ctx->log({{"event", "mc_progress"}, {"request", done}, {"requests", total}, {"elapsed", secs}, {"eta", eta}});
      } catch (...) {  // progress must never fail the evaluation
      }
    }
  };
  const McResult r = multiple_choice(*lm.m, *lm.tok, items, o, progress);

  lua_createtable(L, 0, 11);
  set_field(L, "n", r.n);
  set_field(L, "acc", r.acc);
  set_field(L, "acc_stderr", r.acc_stderr);
  set_field(L, "acc_norm", r.acc_norm);
  set_field(L, "acc_norm_stderr", r.acc_norm_stderr);
  set_field(L, "requests", r.requests);
  set_field(L, "truncated", r.truncated_requests);
  set_field(L, "seconds", r.seconds);
  set_field(L, "protocol", r.protocol);
  lua_createtable(L, (int)r.items.size(), 0);
  need_stack(L, 6);
  for (size_t i = 0; i < r.items.size(); ++i) {
    const McItemResult& ir = r.items[i];
    lua_createtable(L, 0, 6);
    push_numbers(L, ir.loglik);
    lua_setfield(L, -2, "loglik");
    lua_createtable(L, (int)ir.tokens.size(), 0);
    for (size_t c = 0; c < ir.tokens.size(); ++c) {
      lua_pushinteger(L, (lua_Integer)ir.tokens[c]);
      lua_rawseti(L, -2, (lua_Integer)c + 1);
    }
    lua_setfield(L, -2, "tokens");
    lua_createtable(L, (int)ir.greedy.size(), 0);
    for (size_t c = 0; c < ir.greedy.size(); ++c) {
      lua_pushboolean(L, ir.greedy[c]);
      lua_rawseti(L, -2, (lua_Integer)c + 1);
    }
    lua_setfield(L, -2, "greedy");
    set_field(L, "pred", (int64_t)ir.pred + 1);
    set_field(L, "pred_norm", (int64_t)ir.pred_norm + 1);
    set_field(L, "label", (int64_t)items[i].label + 1);
    set_field(L, "truncated", ir.truncated);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "items");
  return 1;
}

void open_multiple_choice(lua_State* L, int mod) {
  set_funcs(L, mod, {{"read_multiple_choice", qf_guard<f_read_multiple_choice>, 2}});
}

}  // namespace qf::lua
