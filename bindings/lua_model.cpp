// qforge — the Lua Model and Tokenizer: userdata "qforge.Model" and "qforge.Tokenizer", and every
// method of both (m:block returns a qforge.Block, lua_block.cpp; m:set_linear takes a QLinear, lua_grid.cpp).
//
// Block numbers are 1-based in Lua; token ids are values, not indices, and are passed
// through unchanged. m:weight() and friends return views: writing them edits the model.
#include <cmath>
#include <cstdio>
#include <memory>

#include "eval/eval.h"
#include "formats/export.h"
#include "model/fold.h"
#include "model/moe_from_dense.h"
#include "model/forward.h"
#include "core/io.h"
#include "formats/loader.h"
#include "formats/loader_qforge.h"
#include "formats/model_source.h"
#include "quant/storage.h"
#include <algorithm>

#include "lua_util.h"
#include "runner.h"
#include "tokenizer/tokenizer.h"

namespace qf::lua {

static const char* kTokMT = "qforge.Tokenizer";

struct LTok {
  std::shared_ptr<Tokenizer> tok;
};

LModel& check_model(lua_State* L, int arg, const char* fn) {
  return *static_cast<LModel*>(check_udata(L, arg, kModelMT, fn));
}
static const Tokenizer& check_tok(lua_State* L, int arg, const char* fn) {
  return *static_cast<LTok*>(check_udata(L, arg, kTokMT, fn))->tok;
}

// 1-based block argument -> 0-based.
static int block_arg(lua_State* L, int arg, const char* fn, const Model& m) {
  int64_t b = check_int(L, arg, fn);
  if (b < 1 || b > (int64_t)m.blocks.size())
    fail(fn, ": block ", b, " out of range (the model has ", m.blocks.size(), " blocks, numbered from 1)");
  return (int)b - 1;
}

// ---- loading ------------------------------------------------------------------------
// qf.load_model(path [, {tokenizer = path, lazy = false}])
static int f_load_model(lua_State* L) {
  std::string path = check_str(L, 1, "load_model");
  check_opts(L, 2, "load_model", {"tokenizer", "lazy"});
  std::string tok_path = opt_field_str(L, 2, "tokenizer", "load_model", "");
  const bool lazy = opt_field_bool(L, 2, "lazy", "load_model", false);
  if (!path_exists(path)) fail("load_model: '", path, "' does not exist");
  ModelFiles files = resolve_model_files(path);
  if (!tok_path.empty()) files.tokenizer = tok_path;
  LModel lm;
  lm.m = std::make_shared<Model>(load_model(files, lazy));
  if (!files.tokenizer.empty()) lm.tok = std::make_shared<Tokenizer>(Tokenizer::load(files.tokenizer));
  else if (lm.m->src && !lm.m->src->tokenizer.model.empty())  // carried inside the checkpoint (GGUF)
    lm.tok = std::make_shared<Tokenizer>(Tokenizer::from_spec(lm.m->src->tokenizer));
  if (RunContext* ctx = run_context(L)) {
    if (lm.m->src) {
      for (const std::string& f : lm.m->src->files) ctx->note_input(f);
    } else {
      ctx->note_input(files.model);
    }
    if (!files.tokenizer.empty()) ctx->note_input(files.tokenizer);
  }
  new_udata<LModel>(L, kModelMT, std::move(lm));
  return 1;
}

static int f_load_tokenizer(lua_State* L) {
  std::string path = check_str(L, 1, "load_tokenizer");
  LTok t{std::make_shared<Tokenizer>(Tokenizer::load(path))};
  if (RunContext* ctx = run_context(L)) ctx->note_input(path);
  new_udata<LTok>(L, kTokMT, std::move(t));
  return 1;
}

// ---- model methods --------------------------------------------------------------------
static int m_config(lua_State* L) {
  const ModelConfig& c = check_model(L, 1, "config").m->cfg;
  lua_createtable(L, 0, 14);
  set_field(L, "dim", c.dim);
  set_field(L, "hidden_dim", c.hidden_dim);
  set_field(L, "n_layers", c.n_layers);
  set_field(L, "n_heads", c.n_heads);
  set_field(L, "n_kv_heads", c.n_kv_heads);
  set_field(L, "vocab_size", c.vocab_size);
  set_field(L, "seq_len", c.seq_len);
  set_field(L, "head_dim", c.n_heads ? c.head_dim() : 0);
  set_field(L, "norm_eps", c.norm_eps);
  set_field(L, "rope_theta", c.rope_theta);
  set_field(L, "rope_interleaved", c.rope_interleaved);
  set_field(L, "tied_classifier", c.tied_classifier);
  set_field(L, "arch", c.arch);
  // Architecture variants (docs/architecture.md#architectures); 0 = off / the default.
  set_field(L, "sliding_window", c.sliding_window);
  lua_createtable(L, (int)c.swa_layers.size(), 0);  // sliding[b] for block b (1-based); empty: none slide
  for (size_t i = 0; i < c.swa_layers.size(); ++i) {
    lua_pushboolean(L, c.swa_layers[i] != 0);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "sliding");
  set_field(L, "rope_theta_swa", c.rope_theta_swa);
  set_field(L, "attn_scale", c.attn_scale);
  set_field(L, "attn_softcap", c.attn_softcap);
  set_field(L, "final_softcap", c.final_softcap);
  // Mixture of experts (0 experts: a dense model)
  set_field(L, "n_experts", c.n_experts);
  set_field(L, "n_experts_used", c.n_experts_used);
  set_field(L, "expert_hidden", c.expert_hidden);
  set_field(L, "shared_hidden", c.shared_hidden);
  set_field(L, "moe_norm_topk", c.moe_norm_topk);
  return 1;
}

static int m_nblocks(lua_State* L) {
  lua_pushinteger(L, (lua_Integer)check_model(L, 1, "nblocks").m->blocks.size());
  return 1;
}

static int m_linear_names(lua_State* L) {
  const std::vector<BlockLinear> ls = block_linears(check_model(L, 1, "linear_names").m->cfg);
  lua_createtable(L, (int)ls.size(), 0);
  for (size_t i = 0; i < ls.size(); ++i) {
    push_str(L, ls[i].name);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

// m:arch(): the architecture table of the model (model/arch.h) with shapes under its config:
//   { name =, block_kind =, hf_layout = ("" plain), stages = N,
//     linears = { {name =, alias =, site =, stage =, shape = {out, in}, rope = "heads"|"kv_heads"|"none",
//                  gguf =, hf =}, ... }  (forward order),
//     norms = { {name =, alias =, gguf =, hf =}, ... },
//     site_of = { [linear] = site }, stage_groups = { {names of stage 1}, ... },
//     sites = { the sites in forward order } }
static int m_arch(lua_State* L) {
  const Model& m = *check_model(L, 1, "arch").m;
  const ArchSpec& a = arch_of(m.cfg);
  lua_createtable(L, 0, 9);
  set_field(L, "name", std::string(a.name));
  set_field(L, "block_kind", std::string(a.kind == BlockKind::LlamaDense ? "llama_dense" : "llama_moe"));
  set_field(L, "hf_layout", m.cfg.hf_layout);
  set_field(L, "stages", (int64_t)a.stages());
  const std::vector<BlockLinear> ls = block_linears(m.cfg);  // per-expert rows expanded (experts.0.gate, …)
  lua_createtable(L, (int)ls.size(), 0);
  for (size_t i = 0; i < ls.size(); ++i) {
    const LinearSpec& s = *ls[i].spec;
    lua_createtable(L, 0, 9);
    set_field(L, "name", ls[i].name);
    set_field(L, "alias", std::string(s.alias));
    set_field(L, "site", site_key_name(SiteKey(s.input, ls[i].expert)));
    set_field(L, "stage", (int64_t)s.stage);
    push_shape(L, linear_shape(m.cfg, ls[i].name));
    lua_setfield(L, -2, "shape");
    set_field(L, "rope", std::string(s.rope == Rope::Heads ? "heads" : s.rope == Rope::KvHeads ? "kv_heads" : "none"));
    set_field(L, "gguf", std::string(s.gguf));
    set_field(L, "hf", expert_name(s.hf, ls[i].expert));
    if (ls[i].expert >= 0) set_field(L, "expert", (int64_t)ls[i].expert + 1);  // 1-based, as blocks
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "linears");
  lua_createtable(L, (int)a.norms.size(), 0);
  for (size_t i = 0; i < a.norms.size(); ++i) {
    lua_createtable(L, 0, 4);
    set_field(L, "name", std::string(a.norms[i].name));
    set_field(L, "alias", std::string(a.norms[i].alias));
    set_field(L, "gguf", std::string(a.norms[i].gguf));
    set_field(L, "hf", std::string(a.norms[i].hf));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "norms");
  lua_newtable(L);
  for (const BlockLinear& s : ls) set_field(L, s.name.c_str(), site_key_name(SiteKey(s.spec->input, s.expert)));
  lua_setfield(L, -2, "site_of");
  lua_createtable(L, a.stages(), 0);
  for (int st = 1; st <= a.stages(); ++st) {
    lua_newtable(L);
    lua_Integer n = 0;
    for (const BlockLinear& s : ls)
      if (s.spec->stage == st) {
        push_str(L, s.name);
        lua_rawseti(L, -2, ++n);
      }
    lua_rawseti(L, -2, st);
  }
  lua_setfield(L, -2, "stage_groups");
  lua_newtable(L);
  {
    lua_Integer n = 0;
    for (const SiteKey& k : block_sites(m.cfg)) {
      push_str(L, site_key_name(k));
      lua_rawseti(L, -2, ++n);
    }
  }
  lua_setfield(L, -2, "sites");
  return 1;
}

static int m_linears(lua_State* L) {
  const Model& m = *check_model(L, 1, "linears").m;
  lua_newtable(L);
  lua_Integer n = 0;
  for (int b = 0; b < m.n_blocks(); ++b) {
    for (const Linear& lin : m.block(b).linears) {
      lua_createtable(L, 0, 4);
      lua_pushinteger(L, (lua_Integer)b + 1);
      lua_setfield(L, -2, "block");
      push_str(L, lin.name);
      lua_setfield(L, -2, "name");
      push_shape(L, lin.weight.shape());
      lua_setfield(L, -2, "shape");
      push_str(L, site_key_name(linear_site(m.cfg, lin.name)));
      lua_setfield(L, -2, "input");
      lua_rawseti(L, -2, ++n);
    }
    m.release_block(b);  // lazy: listing shapes keeps nothing converted
  }
  return 1;
}

static int m_weight(lua_State* L) {
  Model& m = *check_model(L, 1, "weight").m;
  int b = block_arg(L, 2, "weight", m);
  std::string name = check_str(L, 3, "weight");
  push_tensor(L, m.block_mut(b).linear(name).weight);
  return 1;
}

static int m_norm(lua_State* L) {
  Model& m = *check_model(L, 1, "norm").m;
  int b = block_arg(L, 2, "norm", m);
  std::string name = check_str(L, 3, "norm");
  push_tensor(L, m.block_mut(b).norm(arch_of(m.cfg).norm(name).name));  // error lists this architecture's norms
  return 1;
}

static int m_embedding(lua_State* L) {
  push_tensor(L, check_model(L, 1, "embedding").m->tok_emb);
  return 1;
}
static int m_final_norm(lua_State* L) {
  push_tensor(L, check_model(L, 1, "final_norm").m->final_norm);
  return 1;
}
static int m_classifier(lua_State* L) {
  push_tensor(L, check_model(L, 1, "classifier").m->classifier);
  return 1;
}

static int m_clone(lua_State* L) {
  const LModel& src = check_model(L, 1, "clone");
  LModel lm{std::make_shared<Model>(src.m->clone()), src.tok};
  new_udata<LModel>(L, kModelMT, std::move(lm));
  return 1;
}

// m:to_moe{experts = 8, used = 2, router_scale = 0.01} -> a Mixtral-architecture copy whose FFNs are
// split into experts (model/moe_from_dense.h); the tokenizer travels on.
static int m_to_moe(lua_State* L) {
  const char* fn = "to_moe";
  const LModel& src = check_model(L, 1, fn);
  check_opts(L, 2, fn, {"experts", "used", "router_scale"});
  MoeFromDenseOptions o;
  o.experts = (int)opt_field_int(L, 2, "experts", fn, o.experts);
  o.used = (int)opt_field_int(L, 2, "used", fn, o.used);
  o.router_scale = (float)opt_field_num(L, 2, "router_scale", fn, o.router_scale);
  LModel lm{std::make_shared<Model>(moe_from_dense(*src.m, o)), src.tok};
  new_udata<LModel>(L, kModelMT, std::move(lm));
  return 1;
}

static int m_n_params(lua_State* L) {
  lua_pushinteger(L, check_model(L, 1, "n_params").m->n_params());
  return 1;
}

// m:fingerprint() -> "fnv1a64:<hex>" of the config and every weight (Model::fingerprint): the key of
// results computed from this model that runs share (P.references, CVXQ's statistics under cache=).
static int m_fingerprint(lua_State* L) {
  const std::string f = check_model(L, 1, "fingerprint").m->fingerprint();
  lua_pushlstring(L, f.data(), f.size());
  return 1;
}

static int m_tokenizer(lua_State* L) {
  const LModel& lm = check_model(L, 1, "tokenizer");
  if (!lm.tok)
    fail("tokenizer: model '", lm.m->source, "' has no tokenizer (pass {tokenizer = path} to qf.load_model)");
  new_udata<LTok>(L, kTokMT, LTok{lm.tok});
  return 1;
}

// m:forward(ids) with ids a list of token ids (one window) or a list of equal-length lists.
static int m_forward(lua_State* L) {
  const Model& m = *check_model(L, 1, "forward").m;
  if (lua_type(L, 2) != LUA_TTABLE) type_error(L, 2, "forward", "table of token ids");
  lua_rawgeti(L, 2, 1);
  const bool batch = lua_type(L, -1) == LUA_TTABLE;
  lua_pop(L, 1);
  std::vector<int32_t> tokens;
  int B = 1, T = 0;
  if (!batch) {
    tokens = ids_from_table(L, 2, "forward");
    T = (int)tokens.size();
  } else {
    B = (int)lua_rawlen(L, 2);
    for (int b = 1; b <= B; ++b) {
      lua_rawgeti(L, 2, b);
      if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        fail("forward: window ", b, " of the batch is not a table of token ids");
      }
      std::vector<int32_t> w = ids_from_table(L, -1, "forward");
      lua_pop(L, 1);
      if (b == 1) T = (int)w.size();
      if ((int)w.size() != T) fail("forward: window ", b, " has ", w.size(), " tokens, window 1 has ", T);
      tokens.insert(tokens.end(), w.begin(), w.end());
    }
  }
  if (T == 0) fail("forward: no tokens");
  // Positions past the context were never trained (RoPE); m:perplexity refuses them too.
  if (T > m.cfg.seq_len)
    fail("forward: a window of ", T, " tokens exceeds the model's context length ", m.cfg.seq_len, " (seq_len of '", m.source, "')");
  push_tensor(L, forward(m, tokens, B, T));
  return 1;
}

// The text or token ids at `arg` as the evaluations take them; o.stream and o.bos_id (for the
// protocols that put BOS at each window) are filled from the model's tokenizer.
static std::vector<int32_t> eval_tokens(lua_State* L, const LModel& lm, int arg, const char* fn, PplOptions& o) {
  std::vector<int32_t> tokens;
  if (lua_type(L, arg) == LUA_TSTRING) {
    if (!lm.tok) fail(fn, ": model '", lm.m->source, "' has no tokenizer to encode the text (pass token ids)");
    tokens = lm.tok->encode(check_str(L, arg, fn), true, false);
    o.stream = lm.tok->add_bos() ? "text tokenized with BOS once at its start"
                                 : "text tokenized without BOS (the tokenizer adds none)";
  } else if (lua_type(L, arg) == LUA_TTABLE) {
    tokens = ids_from_table(L, arg, fn);
    o.stream = !tokens.empty() && tokens[0] == (lm.tok ? lm.tok->bos_id() : 1) ? "token ids as given (starting with BOS)" : "token ids as given (no BOS)";
  } else {
    type_error(L, arg, fn, "string or table of token ids");
  }
  o.bos_id = lm.tok && lm.tok->add_bos() ? lm.tok->bos_id() : -1;
  return tokens;
}

// The options every evaluation shares: seqlen, max_windows, batch, protocol.
static PplOptions eval_options(lua_State* L, int arg, const char* fn) {
  PplOptions o;
  o.seqlen = (int)opt_field_int(L, arg, "seqlen", fn, 0);
  o.max_windows = (int)opt_field_int(L, arg, "max_windows", fn, 0);
  o.batch = (int)opt_field_int(L, arg, "batch", fn, 0);
  o.protocol = opt_field_str(L, arg, "protocol", fn, "nonoverlap");
  protocol_info(o.protocol);  // an unknown protocol fails before any work
  return o;
}

// Progress lines "<what>: window i/N  elapsed  ETA" on stderr and in the run log, at most every 0.5 s.
static ProgressFn eval_progress(lua_State* L, const char* what, const char* event) {
  RunContext* ctx = run_context(L);
  auto last = std::make_shared<double>(-1);
  return [ctx, last, what, event](int done, int total, double secs) {
    if (done < total && *last >= 0 && secs - *last < 0.5) return;
    *last = secs;
    const double eta = done > 0 ? secs / done * (total - done) : 0;
    std::fprintf(stderr, "%s: window %d/%d  elapsed %.1fs  ETA %.1fs\n", what, done, total, secs, eta);
    if (ctx) {
      try {
        ctx->log({{"event", event}, {"window", done}, {"windows", total}, {"elapsed", secs}, {"eta", eta}});
      } catch (...) {  // progress must never fail the evaluation
      }
    }
  };
}

// A new table with a KL summary's mean, mean_stderr, median, p90 … p999, max, min.
static void push_kld_summary(lua_State* L, const KldSummary& c, int fields) {
  lua_createtable(L, 0, fields);
  set_field(L, "mean", c.mean);
  set_field(L, "mean_stderr", c.mean_stderr);
  set_field(L, "median", c.median);
  set_field(L, "p90", c.p90);
  set_field(L, "p95", c.p95);
  set_field(L, "p99", c.p99);
  set_field(L, "p999", c.p999);
  set_field(L, "max", c.max);
  set_field(L, "min", c.min);
}

// m:perplexity(text_or_ids [, {seqlen=, max_windows=, batch=, protocol=, reference=}])
// reference: a Model (its full distributions, computed beside m's), a ReferenceLogits or a path
// to a reference-logits file; the result then has a kld table.
static int m_perplexity(lua_State* L) {
  const char* fn = "perplexity";
  const LModel& lm = check_model(L, 1, fn);
  check_opts(L, 3, fn, {"seqlen", "max_windows", "batch", "protocol", "reference"});
  PplOptions o = eval_options(L, 3, fn);
  KldReference ref;
  std::shared_ptr<const ReferenceLogits> loaded;
  if (lua_type(L, 3) == LUA_TTABLE) {
    lua_pushstring(L, "reference");
    lua_rawget(L, 3);
    const int ri = lua_gettop(L);
    if (lua_type(L, ri) == LUA_TSTRING) {
      loaded = std::make_shared<const ReferenceLogits>(ReferenceLogits::load(lua_tostring(L, ri)));
      ref.logits = loaded.get();
    } else if (const ReferenceLogits* r = test_reference(L, ri)) {
      ref.logits = r;
    } else if (lua_type(L, ri) == LUA_TUSERDATA && luaL_testudata(L, ri, kModelMT)) {
      ref.model = static_cast<LModel*>(lua_touserdata(L, ri))->m.get();
    } else if (!lua_isnil(L, ri)) {
      fail("perplexity: option 'reference' must be a qforge.Model, a qforge.ReferenceLogits or a file path, got ", type_name(L, ri));
    }
    lua_pop(L, 1);
  }
  const std::vector<int32_t> tokens = eval_tokens(L, lm, 2, fn, o);
  const PplResult r = perplexity(*lm.m, tokens, o, eval_progress(L, "ppl", "ppl_progress"), ref);

  lua_createtable(L, 0, 10);
  set_field(L, "ppl", r.ppl);
  set_field(L, "nll", r.nll);
  set_field(L, "tokens_scored", r.tokens_scored);
  set_field(L, "text_tokens", r.text_tokens);
  set_field(L, "windows", r.windows);
  set_field(L, "seqlen", r.seqlen);
  set_field(L, "seconds", r.seconds);
  set_field(L, "protocol", r.protocol);
  set_field(L, "protocol_name", r.protocol_name);
  if (r.has_kld) {
    const KldStats& k = r.kld;
    push_kld_summary(L, k, 20);
    set_field(L, "same_top", k.same_top);
    set_field(L, "same_top_stderr", k.same_top_stderr);
    set_field(L, "dp_mean", k.dp_mean);
    set_field(L, "dp_stderr", k.dp_stderr);
    set_field(L, "dp_rms", k.dp_rms);
    set_field(L, "nll_reference", k.nll_reference);
    set_field(L, "ppl_reference", k.ppl_reference);
    set_field(L, "positions", k.n);
    set_field(L, "topk", k.topk);
    push_kld_summary(L, k.llamacpp, 9);
    lua_setfield(L, -2, "llamacpp");
    lua_setfield(L, -2, "kld");
  }
  return 1;
}

// m:eval_plan(text_or_ids [, {seqlen=, max_windows=, batch=, protocol=}]) -> {protocol_name=,
// seqlen=, windows=, positions=, tokens=}: what m:perplexity would score (tokens: the fingerprint
// reference logits carry), without running it.
static int m_eval_plan(lua_State* L) {
  const char* fn = "eval_plan";
  const LModel& lm = check_model(L, 1, fn);
  check_opts(L, 3, fn, {"seqlen", "max_windows", "batch", "protocol"});
  PplOptions o = eval_options(L, 3, fn);
  const EvalPlan p = eval_plan(*lm.m, eval_tokens(L, lm, 2, fn, o), o);
  lua_createtable(L, 0, 5);
  set_field(L, "protocol_name", p.protocol_name);
  set_field(L, "seqlen", p.seqlen);
  set_field(L, "windows", p.windows);
  set_field(L, "positions", p.positions);
  set_field(L, "tokens", fingerprint_text(p.tokens_hash));
  return 1;
}

// m:reference_logits(text_or_ids [, {seqlen=, max_windows=, batch=, protocol=, topk=}]) -> ReferenceLogits
static int m_reference_logits(lua_State* L) {
  const char* fn = "reference_logits";
  const LModel& lm = check_model(L, 1, fn);
  check_opts(L, 3, fn, {"seqlen", "max_windows", "batch", "protocol", "topk"});
  PplOptions o = eval_options(L, 3, fn);
  const int64_t topk = opt_field_int(L, 3, "topk", fn, 0);
  if (topk < 0) fail("reference_logits: option 'topk' must be >= 0 (0 = the whole vocabulary), got ", topk);
  const std::vector<int32_t> tokens = eval_tokens(L, lm, 2, fn, o);
  push_reference(L, reference_logits(*lm.m, tokens, o, topk, eval_progress(L, "reference logits", "reference_progress")));
  return 1;
}

static int m_tostring(lua_State* L) {
  const Model& m = *check_model(L, 1, "__tostring").m;
  char buf[512];
  std::snprintf(buf, sizeof buf, "qforge.Model %s: %s dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, %lld params",
                m.source.c_str(), m.cfg.arch.c_str(), m.cfg.dim, m.cfg.hidden_dim, m.cfg.n_layers, m.cfg.n_heads,
                m.cfg.n_kv_heads, m.cfg.vocab_size, (long long)m.n_params());
  lua_pushstring(L, buf);
  return 1;
}

// ---- tokenizer methods ------------------------------------------------------------------
static int k_encode(lua_State* L) {
  const Tokenizer& tok = check_tok(L, 1, "encode");
  std::string text = check_str(L, 2, "encode");
  check_opts(L, 3, "encode", {"bos", "eos"});
  bool bos = opt_field_bool(L, 3, "bos", "encode", true);
  bool eos = opt_field_bool(L, 3, "eos", "encode", false);
  std::vector<int32_t> ids = tok.encode(text, bos, eos);
  lua_createtable(L, (int)ids.size(), 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    lua_pushinteger(L, ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int k_decode(lua_State* L) {
  const Tokenizer& tok = check_tok(L, 1, "decode");
  push_str(L, tok.decode(ids_from_table(L, 2, "decode")));
  return 1;
}

static int k_vocab_size(lua_State* L) {
  lua_pushinteger(L, check_tok(L, 1, "vocab_size").vocab_size());
  return 1;
}

static int k_piece(lua_State* L) {
  const Tokenizer& tok = check_tok(L, 1, "piece");
  int64_t id = check_int(L, 2, "piece");
  if (id < 0 || id >= tok.vocab_size()) fail("piece: token id ", id, " out of range [0, ", tok.vocab_size(), ")");
  push_str(L, tok.piece((int32_t)id));
  return 1;
}

static int k_bos_id(lua_State* L) {
  lua_pushinteger(L, check_tok(L, 1, "bos_id").bos_id());
  return 1;
}
static int k_eos_id(lua_State* L) {
  lua_pushinteger(L, check_tok(L, 1, "eos_id").eos_id());
  return 1;
}

// m:save(path, {format = "hf"|"gguf"|"gptq"|"qforge", dtype = ...})
static int m_save(lua_State* L) {
  LModel& lm = check_model(L, 1, "save");
  std::string path = check_str(L, 2, "save");
  check_opts(L, 3, "save", {"format", "dtype"});
  SaveOptions o;
  o.format = opt_field_str(L, 3, "format", "save", "");
  o.dtype = opt_field_str(L, 3, "dtype", "save", "");
  if (o.format.empty()) fail("save: option 'format' is required (", export_format_names(), ")");
  save_model(*lm.m, lm.tok.get(), path, o);
  return 0;
}

// m:save_blocks(path, first, last): blocks first..last (1-based, inclusive) alone, in the qforge
// layout (a run's block checkpoint: formats/loader_qforge.h); m:load_blocks(path) puts them back
// (config checked) and returns first, last.
static int m_save_blocks(lua_State* L) {
  LModel& lm = check_model(L, 1, "save_blocks");
  const std::string path = check_str(L, 2, "save_blocks");
  const int64_t first = check_int(L, 3, "save_blocks"), last = check_int(L, 4, "save_blocks");
  const int nb = lm.m->n_blocks();
  if (first < 1 || last < first || last > nb)
    fail("save_blocks: blocks ", first, "..", last, " are not a range within 1..", nb);
  save_qforge_blocks(*lm.m, path, (int)first - 1, (int)(last - first + 1));
  return 0;
}
static int m_load_blocks(lua_State* L) {
  LModel& lm = check_model(L, 1, "load_blocks");
  const auto [first, count] = load_qforge_blocks(check_str(L, 2, "load_blocks"), *lm.m);
  lua_pushinteger(L, first + 1);
  lua_pushinteger(L, first + count);
  return 2;
}

// qf.check_save{format=, dtype=, grid={bits=, group=, sym=, f16_scales=, outliers=, allocated=,
// float_zero=}, model=, path=} -> nil when the export can be stored, else option, message (the
// engine's check_save: the exporter and storage-type tables).
static int f_check_save(lua_State* L) {
  const char* fn = "check_save";
  check_table(L, 1, fn);
  check_opts(L, 1, fn, {"format", "dtype", "grid", "model", "path"});
  SaveOptions o;
  o.format = opt_field_str(L, 1, "format", fn, "");
  if (o.format.empty()) fail("check_save: option 'format' is required (", export_format_names(), ")");
  o.dtype = opt_field_str(L, 1, "dtype", fn, "");
  const std::string path = opt_field_str(L, 1, "path", fn, "");
  GridPlan plan;
  bool has_plan = false;
  lua_getfield(L, 1, "grid");
  if (!lua_isnil(L, -1)) {
    const int g = lua_gettop(L);
    if (!lua_istable(L, g)) fail("check_save: option 'grid' must be a table, got ", type_name(L, g));
    check_opts(L, g, "check_save grid", {"bits", "group", "sym", "f16_scales", "mapping", "outliers", "allocated", "float_zero", "ktype", "transforms"});
    lua_getfield(L, g, "bits");
    const bool has_bits = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!has_bits) fail("check_save: option 'grid' needs bits");
    plan.bits = (int)opt_field_int(L, g, "bits", fn, 4);
    plan.group = opt_field_int(L, g, "group", fn, -1);
    plan.sym = opt_field_bool(L, g, "sym", fn, false);
    plan.f16_scales = opt_field_bool(L, g, "f16_scales", fn, false);
    plan.outliers = opt_field_bool(L, g, "outliers", fn, false);
    plan.allocated = opt_field_bool(L, g, "allocated", fn, false);
    plan.float_zero = opt_field_bool(L, g, "float_zero", fn, false);
    plan.transforms = opt_field_bool(L, g, "transforms", fn, false);
    plan.signed_scales = opt_field_str(L, g, "mapping", fn, "gptq") == "llamacpp";
    plan.ktype = opt_field_str(L, g, "ktype", fn, "");
    has_plan = true;
  }
  lua_pop(L, 1);
  const Model* m = nullptr;
  const Tokenizer* tok = nullptr;
  lua_getfield(L, 1, "model");  // the argument table keeps the model alive
  if (!lua_isnil(L, -1)) {
    LModel& lm = check_model(L, lua_gettop(L), fn);
    m = lm.m.get();
    tok = lm.tok.get();
  }
  lua_pop(L, 1);
  const SaveRefusal r = check_save(o, has_plan ? &plan : nullptr, m, tok, path);
  if (r.ok()) {
    lua_pushnil(L);
    return 1;
  }
  push_str(L, r.option);
  push_str(L, r.message);
  return 2;
}

static int k_tostring(lua_State* L) {
  const Tokenizer& tok = check_tok(L, 1, "__tostring");
  push_str(L, "qforge.Tokenizer " + tok.path() + " (" + std::to_string(tok.vocab_size()) + " tokens)");
  return 1;
}

// m:block_forward(b, x, seqlen) -> y: block b (1-based) with the model's current weights on
// x [n·seqlen, dim] (n windows of seqlen tokens, window-major, as cal:inputs() holds them).
static int m_block_forward(lua_State* L) {
  const char* fn = "block_forward";
  const Model& m = *check_model(L, 1, fn).m;
  const int64_t b = check_int(L, 2, fn);
  if (b < 1 || b > m.n_blocks()) fail(fn, ": block ", b, " out of range (the model has ", m.n_blocks(), " blocks, numbered from 1)");
  const Tensor& x = check_tensor(L, 3, fn);
  const int64_t T = check_int(L, 4, fn);
  if (T < 1 || T > m.cfg.seq_len) fail(fn, ": seqlen ", T, " is outside 1..", m.cfg.seq_len, " (the model's context)");
  if (x.dim() != 2 || x.size(1) != m.cfg.dim || x.size(0) == 0 || x.size(0) % T)
    fail(fn, ": x is ", shape_str(x.shape()), "; expected [n·seqlen, ", m.cfg.dim, "] with seqlen ", T);
  const Tensor xf = x.dtype() == DType::F32 ? x.contiguous() : x.to(DType::F32);
  push_tensor(L, block_forward(m, (int)b - 1, xf, (int)(x.size(0) / T), (int)T));
  return 1;
}

// m:fold_transforms() -> {{block =, linear =, kind =, side =, folded =, into = | why =}, …}: folds the
// quantized linears' transforms where the algebra allows (model/fold.h) and reports every one.
static int m_fold_transforms(lua_State* L) {
  Model& m = *check_model(L, 1, "fold_transforms").m;
  const std::vector<FoldEntry> r = fold_transforms(m);
  lua_createtable(L, (int)r.size(), 0);
  for (size_t i = 0; i < r.size(); ++i) {
    lua_createtable(L, 0, 6);
    set_field(L, "block", (int64_t)r[i].block + 1);
    set_field(L, "linear", r[i].linear);
    set_field(L, "kind", r[i].kind);
    set_field(L, "side", r[i].side);
    set_field(L, "folded", r[i].folded);
    set_field(L, r[i].folded ? "into" : "why", r[i].into);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

// ---- linears, biases, storage, blocks ------------------------------------------------
// m:set_linear(block, name, q): replaces a linear's weight by a QLinear (its dequantized
// values; the codes are kept for exports that store them) or by a Tensor (codes dropped).
static int m_set_linear(lua_State* L) {
  Model& m = *check_model(L, 1, "set_linear").m;
  const int64_t b = check_int(L, 2, "set_linear");
  if (b < 1 || b > m.n_blocks()) fail("set_linear: block ", b, " out of range (the model has ", m.n_blocks(), " blocks, numbered from 1)");
  Linear& lin = m.block_mut((int)b - 1).linear(check_str(L, 3, "set_linear"));
  if (is_tensor(L, 4)) {
    const Tensor& W = check_tensor(L, 4, "set_linear");
    if (W.shape() != lin.weight.shape())
      fail("set_linear: block ", b, " linear '", lin.name, "' is ", shape_str(lin.weight.shape()), ", the tensor is ", shape_str(W.shape()));
    lin.weight.copy_(W);
    lin.quant.reset();
    return 0;
  }
  const QuantizedLinear& q = check_qlinear(L, 4, "set_linear");
  if (q.grid.rows != lin.weight.size(0) || q.grid.cols != lin.weight.size(1))
    fail("set_linear: block ", b, " linear '", lin.name, "' is ", shape_str(lin.weight.shape()), ", the QLinear is [", q.grid.rows, ", ", q.grid.cols, "]");
  lin.weight.copy_(q.dequantize());
  lin.quant = std::make_shared<const QuantizedLinear>(q);
  return 0;
}

static Linear& linear_arg(lua_State* L, const char* fn) {
  Model& m = *check_model(L, 1, fn).m;
  const int64_t b = check_int(L, 2, fn);
  if (b < 1 || b > m.n_blocks()) fail(fn, ": block ", b, " out of range (the model has ", m.n_blocks(), " blocks, numbered from 1)");
  return m.block_mut((int)b - 1).linear(check_str(L, 3, fn));
}

// m:bias(block, name) -> tensor view or nil
static int m_bias(lua_State* L) {
  Linear& lin = linear_arg(L, "bias");
  if (lin.bias.defined()) push_tensor(L, lin.bias);
  else lua_pushnil(L);
  return 1;
}

// m:set_bias(block, name, tensor|nil): adds, replaces or removes a linear's bias
static int m_set_bias(lua_State* L) {
  Linear& lin = linear_arg(L, "set_bias");
  if (is_none_or_nil(L, 4)) {
    lin.bias = Tensor();
    return 0;
  }
  const Tensor& b = check_tensor(L, 4, "set_bias");
  if (b.numel() != lin.out_features())
    fail("set_bias: linear '", lin.name, "' has ", lin.out_features(), " outputs, the bias has ", b.numel(), " entries");
  Tensor nb = Tensor::empty({lin.out_features()});
  nb.copy_(b.contiguous().view({lin.out_features()}));
  for (float v : nb.to_vector())
    if (!std::isfinite(v)) fail("set_bias: linear '", lin.name, "': the bias has a non-finite entry");
  lin.bias = nb;
  return 0;
}

// m:storage() -> {bits_per_weight =, codes =, params =, side =, outliers =, unquantized = (bits per
// weight each), unquantized_dtype =, weights =, pruned_fraction =} over the block linears (storage.h).
static void push_storage(lua_State* L, const StorageBits& s) {
  const double n = (double)std::max<int64_t>(s.weights, 1);
  lua_createtable(L, 0, 10);
  set_field(L, "bits_per_weight", s.per_weight());
  set_field(L, "codes", s.codes / n);
  set_field(L, "params", s.params / n);
  set_field(L, "side", s.side / n);
  set_field(L, "outliers", s.outliers / n);
  set_field(L, "transform", s.transform / n);
  set_field(L, "unquantized", s.unquantized / n);
  set_field(L, "unquantized_dtype", std::string(s.unquantized_dtype()));
  set_field(L, "weights", s.weights);
  set_field(L, "pruned_fraction", (double)s.pruned / n);
}

// m:storage([{per_linear = false}]) -> the totals; with per_linear also .linears = {{block =,
// name =, quantized =, grid = (its spec, when quantized), bits_per_weight =, …}, …} in block and forward order.
static int m_storage(lua_State* L) {
  const Model& m = *check_model(L, 1, "storage").m;
  check_opts(L, 2, "storage", {"per_linear"});
  const bool per = opt_field_bool(L, 2, "per_linear", "storage", false);
  push_storage(L, model_storage(m));
  if (per) {
    need_stack(L, 4);
    lua_createtable(L, (int)(m.n_blocks() * 7), 0);
    int i = 0;
    for (int b = 0; b < m.n_blocks(); ++b) {
      for (const Linear& lin : m.block(b).linears) {
        push_storage(L, linear_storage(lin));
        set_field(L, "block", b + 1);
        set_field(L, "name", lin.name);
        set_field(L, "quantized", lin.quant != nullptr);
        if (lin.quant) set_field(L, "grid", lin.quant->grid.spec.str());
        lua_rawseti(L, -2, ++i);
      }
      m.release_block(b);
    }
    lua_setfield(L, -2, "linears");
  }
  return 1;
}

// m:block(b) -> block handle
static int m_block(lua_State* L) {
  LModel& lm = check_model(L, 1, "block");
  const int64_t b = check_int(L, 2, "block");
  if (b < 1 || b > lm.m->n_blocks())
    fail("block: block ", b, " out of range (the model has ", lm.m->n_blocks(), " blocks, numbered from 1)");
  push_block(L, lm.m, (int)b - 1);
  return 1;
}

void open_model(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities (the most arguments used, self included): lua_util.h.
  register_class(L, kModelMT,
                 {{"config", qf_guard<m_config>, 1},
                  {"nblocks", qf_guard<m_nblocks>, 1},
                  {"linear_names", qf_guard<m_linear_names>, 1},
                  {"linears", qf_guard<m_linears>, 1},
                  {"arch", qf_guard<m_arch>, 1},
                  {"weight", qf_guard<m_weight>, 3},
                  {"norm", qf_guard<m_norm>, 3},
                  {"embedding", qf_guard<m_embedding>, 1},
                  {"final_norm", qf_guard<m_final_norm>, 1},
                  {"classifier", qf_guard<m_classifier>, 1},
                  {"clone", qf_guard<m_clone>, 1},
                  {"n_params", qf_guard<m_n_params>, 1},
                  {"fingerprint", qf_guard<m_fingerprint>, 1},
                  {"tokenizer", qf_guard<m_tokenizer>, 1},
                  {"forward", qf_guard<m_forward>, 2},
                  {"block_forward", qf_guard<m_block_forward>, 4},
                  {"fold_transforms", qf_guard<m_fold_transforms>, 1},
                  {"perplexity", qf_guard<m_perplexity>, 3},
                  {"reference_logits", qf_guard<m_reference_logits>, 3},
                  {"eval_plan", qf_guard<m_eval_plan>, 3},
                  {"multiple_choice", qf_guard<model_multiple_choice>, 3},
                  {"save", qf_guard<m_save>, 3},
                  {"save_blocks", qf_guard<m_save_blocks>, 4},
                  {"to_moe", qf_guard<m_to_moe>, 2},
                  {"load_blocks", qf_guard<m_load_blocks>, 2},
                  {"set_linear", qf_guard<m_set_linear>, 4},
                  {"bias", qf_guard<m_bias>, 3},
                  {"set_bias", qf_guard<m_set_bias>, 4},
                  {"storage", qf_guard<m_storage>, 2},
                  {"block", qf_guard<m_block>, 2}},
                 udata_gc<LModel>, qf_guard<m_tostring>);

  register_class(L, kTokMT,
                 {{"encode", qf_guard<k_encode>, 3}, {"decode", qf_guard<k_decode>, 2}, {"vocab_size", qf_guard<k_vocab_size>, 1},
                  {"piece", qf_guard<k_piece>, 2},   {"bos_id", qf_guard<k_bos_id>, 1}, {"eos_id", qf_guard<k_eos_id>, 1}},
                 udata_gc<LTok>, qf_guard<k_tostring>);

  set_funcs(L, mod, {{"load_model", qf_guard<f_load_model>, 2}, {"load_tokenizer", qf_guard<f_load_tokenizer>, 1},
                     {"check_save", qf_guard<f_check_save>, 1}});
}

}  // namespace qf::lua
