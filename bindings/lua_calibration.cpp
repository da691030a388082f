// qforge — the calibration pipeline in Lua: qf.calibration{...} -> userdata "qforge.Calibration"
// (calib/calibration.h: seeded windows, the sequential block pipeline) and every method on it:
//   cal:capture, advance, save_state, load_state, block, nblocks, memory_bytes, tokens, inputs, fp_inputs, fp_outputs,
//   cal:gradient_statistics{...} (CVXQ's sensitivities, calib/sensitivity.h),
//   cal:finetune{...} (block-wise finetuning of the current block, lua_block.cpp).
// Also qf.input_site(name): the site feeding a linear.
#include <chrono>
#include <cstdio>

#include "calib/calibration.h"
#include "core/io.h"
#include "calib/sensitivity.h"
#include "lua_util.h"
#include "runner.h"

namespace qf::lua {

static constexpr const char* kCalMT = "qforge.Calibration";

struct LCal {
  std::shared_ptr<Model> m;
  std::shared_ptr<Calibration> cal;
};

static LCal& check_cal(lua_State* L, int arg, const char* fn) { return *static_cast<LCal*>(check_udata(L, arg, kCalMT, fn)); }

// A site of the model's blocks by name (attn_in, …; an expert's experts.3.ffn_in): arch.h parse_site_key.
static SiteKey site_from_name(const Model& m, const std::string& s, const char* fn) {
  try {
    return parse_site_key(m.cfg, s);
  } catch (const Error& e) {
    fail(fn, ": ", e.what());
  }
}

// qf.calibration{model=, text= | tokens=, nsamples=128, seqlen=0, seed=run seed, range={first, last}, fp_chain=true}
static int f_calibration(lua_State* L) {
  const char* fn = "calibration";
  check_table(L, 1, fn);
  check_opts(L, 1, fn, {"model", "text", "tokens", "nsamples", "seqlen", "seed", "range", "fp_chain"});
  lua_getfield(L, 1, "model");
  LModel& lm = check_model(L, -1, fn);
  std::shared_ptr<Model> model = lm.m;
  std::shared_ptr<Tokenizer> tok = lm.tok;
  lua_pop(L, 1);

  std::vector<int32_t> tokens;
  lua_getfield(L, 1, "tokens");
  const bool has_tokens = !lua_isnil(L, -1);
  if (has_tokens) tokens = ids_from_table(L, -1, fn);
  lua_pop(L, 1);
  const std::string text = opt_field_str(L, 1, "text", fn, "");
  if (has_tokens == !text.empty()) fail(fn, ": give exactly one of 'text' (a string) or 'tokens' (a table of ids)");
  if (!has_tokens) {
    if (!tok) fail(fn, ": the model has no tokenizer; pass tokens= instead of text=");
    tokens = tok->encode(text, true, false);
  }
  RunContext* ctx = run_context(L);
  CalibWindowsOptions o;
  o.nsamples = (int)opt_field_int(L, 1, "nsamples", fn, 128);
  o.seqlen = (int)opt_field_int(L, 1, "seqlen", fn, 0);
  if (o.seqlen == 0) o.seqlen = model->cfg.seq_len;
  o.seed = (uint64_t)opt_field_int(L, 1, "seed", fn, ctx ? ctx->seed : 0);
  lua_getfield(L, 1, "range");  // 1-based inclusive token positions {first, last}
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1) || lua_rawlen(L, -1) != 2) fail(fn, ": option 'range' must be {first, last} (1-based token positions)");
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    int ok1 = 0, ok2 = 0;
    const lua_Integer a = lua_tointegerx(L, -2, &ok1), b = lua_tointegerx(L, -1, &ok2);
    lua_pop(L, 2);
    if (!ok1 || !ok2) fail(fn, ": option 'range' must hold two integers");
    o.begin = a - 1;
    o.end = b;
  }
  lua_pop(L, 1);
  const bool fp_chain = opt_field_bool(L, 1, "fp_chain", fn, true);
  const std::vector<int32_t> windows = draw_windows(tokens, o);
  LCal c{model, std::make_shared<Calibration>(*model, windows, o.nsamples, o.seqlen, fp_chain)};
  std::fprintf(stderr, "calibration: %d windows x %d tokens (seed %llu, tokens [%lld, %lld] of %zu, 1-based), %.1f MB of block activations\n",
               o.nsamples, o.seqlen, (unsigned long long)o.seed, (long long)o.begin + 1, (long long)(o.end < 0 ? (int64_t)tokens.size() : o.end),
               tokens.size(), c.cal->memory_bytes() / 1e6);
  new_udata<LCal>(L, kCalMT, std::move(c));
  return 1;
}

// cal:capture([sites] [, {cross = bool, all_experts = bool}]) -> {attn_in = {sigma = Tensor, mu = Tensor
// (nil when no token reached the site: an expert nothing was routed to), tokens = N [, cross = Tensor,
// sigma_fp = Tensor]}, ...}; an expert's sites are experts.<e>.ffn_in / ffn_mid (0-based e), over
// the tokens routed to it, or every token with all_experts = true. cross = true adds, per site,
// G = Σ x·x̃ᵀ and the full-precision Σ x·xᵀ (x: the full-precision chain's input, x̃: the quantized
// prefix's; the block's current weights run both: capture at the block's start; docs/methods.md#qronos).
static int c_capture(lua_State* L) {
  const char* fn = "capture";
  LCal& c = check_cal(L, 1, fn);
  std::vector<SiteKey> sites;
  if (!is_none_or_nil(L, 2)) {
    check_table(L, 2, fn);
    const lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, 2, i);
      if (lua_type(L, -1) != LUA_TSTRING) fail(fn, ": sites must be names (attn_in, attn_out, ffn_in, ffn_mid, experts.<e>.ffn_in, ...)");
      sites.push_back(site_from_name(*c.m, lua_tostring(L, -1), fn));
      lua_pop(L, 1);
    }
  }
  bool cross = false, all_experts = false;
  if (!is_none_or_nil(L, 3)) {
    check_table(L, 3, fn);
    check_opts(L, 3, fn, {"cross", "all_experts"});
    cross = opt_field_bool(L, 3, "cross", fn, false);
    all_experts = opt_field_bool(L, 3, "all_experts", fn, false);
    if (all_experts && arch_of(c.m->cfg).kind != BlockKind::LlamaMoe)
      fail(fn, ": all_experts applies to mixture-of-experts blocks; ", c.m->cfg.arch, " has none");
    if (all_experts && cross) fail(fn, ": all_experts and cross cannot be combined");
  }
  std::map<SiteKey, SiteStats> st;
  std::map<SiteKey, CrossStats> cs;
  if (cross) {
    cs = c.cal->capture_cross(*c.m, sites);
    for (auto& [site, x] : cs) st[site] = x.q;
  } else {
    st = c.cal->capture(*c.m, sites, all_experts);
  }
  lua_createtable(L, 0, (int)st.size());
  for (auto& [site, s] : st) {
    lua_createtable(L, 0, 5);
    push_tensor(L, s.sigma());
    lua_setfield(L, -2, "sigma");
    if (s.tokens > 0) {
      push_tensor(L, s.mu());
      lua_setfield(L, -2, "mu");
    }
    set_field(L, "tokens", s.tokens);
    if (cross) {
      const CrossStats& x = cs.at(site);
      Tensor g = Tensor::empty({x.cross.rows(), x.cross.cols()}), f = Tensor::empty({x.fp.rows(), x.fp.cols()});
      g.mat() = x.cross.cast<float>();
      f.mat() = x.fp.cast<float>();
      push_tensor(L, g);
      lua_setfield(L, -2, "cross");
      push_tensor(L, f);
      lua_setfield(L, -2, "sigma_fp");
    }
    lua_setfield(L, -2, site_key_name(site).c_str());
  }
  return 1;
}

static int c_advance(lua_State* L) {
  LCal& c = check_cal(L, 1, "advance");
  c.cal->advance(*c.m);
  return 0;
}
// cal:save_state(path) / cal:load_state(path): the state between blocks (calib/calibration.h).
static int c_save_state(lua_State* L) {
  LCal& c = check_cal(L, 1, "save_state");
  c.cal->save_state(check_str(L, 2, "save_state"));
  return 0;
}
static int c_load_state(lua_State* L) {
  LCal& c = check_cal(L, 1, "load_state");
  c.cal->load_state(check_str(L, 2, "load_state"));
  return 0;
}
static int c_block(lua_State* L) {  // 1-based current block
  lua_pushinteger(L, check_cal(L, 1, "block").cal->block() + 1);
  return 1;
}
static int c_nblocks(lua_State* L) {
  lua_pushinteger(L, check_cal(L, 1, "nblocks").cal->nblocks());
  return 1;
}
static int c_memory_bytes(lua_State* L) {
  lua_pushinteger(L, check_cal(L, 1, "memory_bytes").cal->memory_bytes());
  return 1;
}
static int c_tokens(lua_State* L) {
  lua_pushinteger(L, check_cal(L, 1, "tokens").cal->tokens());
  return 1;
}
// cal:fingerprint() -> "fnv1a64:<hex>" of the window count, length and token ids: equal for two
// calibrations over the same windows (the key of statistics that runs share).
static int c_fingerprint(lua_State* L) {
  const Calibration& c = *check_cal(L, 1, "fingerprint").cal;
  const int64_t shape[2] = {c.nsamples(), c.seqlen()};
  uint64_t h = fnv1a64(shape, sizeof shape);
  h = fnv1a64(c.windows().data(), c.windows().size() * sizeof(int32_t), h);
  const std::string f = fingerprint_text(h);
  lua_pushlstring(L, f.data(), f.size());
  return 1;
}
static int c_inputs(lua_State* L) {
  push_tensor(L, check_cal(L, 1, "inputs").cal->inputs());
  return 1;
}
// cal:activations(site [, {first = 1, count = all, chain = "quantized" | "fp"}]) -> [count·seqlen, c]:
// the site's input activations over windows first .. first+count−1 of the current block, with the
// model's current weights (Calibration::activations).
static int c_activations(lua_State* L) {
  const char* fn = "activations";
  LCal& c = check_cal(L, 1, fn);
  const SiteKey site = site_from_name(*c.m, check_str(L, 2, fn), fn);
  check_opts(L, 3, fn, {"first", "count", "chain"});
  const int64_t n = c.cal->nsamples();
  const int64_t first = opt_field_int(L, 3, "first", fn, 1);
  const int64_t count = opt_field_int(L, 3, "count", fn, n - first + 1);
  if (first < 1 || first > n) fail(fn, ": first window ", first, " is outside 1..", n);
  if (count < 1 || first + count - 1 > n)
    fail(fn, ": count ", count, " from window ", first, " runs past the calibration's ", n, " windows");
  const std::string chain = opt_field_str(L, 3, "chain", fn, "quantized");
  if (chain != "quantized" && chain != "fp") fail(fn, ": chain must be \"quantized\" or \"fp\", got \"", chain, "\"");
  push_tensor(L, c.cal->activations(*c.m, site, (int)first - 1, (int)count, chain == "fp"));
  return 1;
}

static void need_fp_chain(const Calibration& cal, const char* fn) {
  if (!cal.fp_chain()) fail(fn, ": this calibration has no full-precision chain (made with fp_chain=false)");
}
static int c_fp_inputs(lua_State* L) {
  const Calibration& cal = *check_cal(L, 1, "fp_inputs").cal;
  need_fp_chain(cal, "fp_inputs");
  push_tensor(L, cal.fp_inputs());
  return 1;
}
static int c_fp_outputs(lua_State* L) {
  need_fp_chain(*check_cal(L, 1, "fp_outputs").cal, "fp_outputs");
  const Tensor& t = check_cal(L, 1, "fp_outputs").cal->fp_outputs();
  if (!t.defined()) fail("fp_outputs: not available before the block's first capture");
  push_tensor(L, t);
  return 1;
}

// cal:gradient_statistics{pca = 1024, stride = 128, iters = 0, batch = 1, joint_positions = false}
// CVXQ's squared gradients of PCA-projected final hidden states (sensitivity.h) over the
// calibration's windows, on the model's current weights (run it before quantizing). Returns
//   { [block] = { q = {g2 = Tensor [out, in], row = Tensor [out]}, ... },
//     pca = {k =, eigenvalues = {...}, explained = fraction of the variance}, iters =, samples =,
//     seconds =, pca_seconds = }
static int c_gradient_statistics(lua_State* L) {
  const char* fn = "gradient_statistics";
  LCal& c = check_cal(L, 1, fn);
  if (!is_none_or_nil(L, 2)) check_table(L, 2, fn);
  check_opts(L, 2, fn, {"pca", "stride", "iters", "batch", "joint_positions"});
  const Model& m = *c.m;
  const int k = (int)opt_field_int(L, 2, "pca", fn, 1024);
  if (k < 1) fail(fn, ": option 'pca' must be >= 1, got ", k);
  GradStatsOptions o;
  o.stride = (int)opt_field_int(L, 2, "stride", fn, o.stride);
  o.iters = (int)opt_field_int(L, 2, "iters", fn, o.iters);
  o.batch = (int)opt_field_int(L, 2, "batch", fn, o.batch);
  o.joint_positions = opt_field_bool(L, 2, "joint_positions", fn, o.joint_positions);
  const int nwin = c.cal->nsamples(), T = c.cal->seqlen();
  check_grad_stats_options(o, nwin);  // before the PCA's forward pass
  RunContext* ctx = run_context(L);
  auto now = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  const double tp = now();
  // CVXQ keeps the top 1024 of 4096+ dimensions; a narrower model keeps all it has.
  auto pca_progress = [&](int done, int total, double secs) {
    std::fprintf(stderr, "gradient statistics: PCA forward %d/%d windows  %.1f s  ETA %.0f s\n", done, total, secs,
                 secs / done * (total - done));
    if (ctx) ctx->log({{"event", "gradient_statistics_pca"}, {"windows", done}, {"nwin", total}, {"seconds", secs}});
  };
  const HiddenPca pca = hidden_pca(m, c.cal->windows(), nwin, T, std::min(k, m.cfg.dim), 8, pca_progress);
  const double pca_seconds = now() - tp;
  double top = 0;
  for (double e : pca.eigenvalues) top += e;
  std::fprintf(stderr, "gradient statistics: PCA of %lld final hidden states, %d components hold %.1f%% of the variance (%.1f s)\n",
               (long long)pca.tokens, (int)pca.eigenvalues.size(), 100 * top / pca.total_variance, pca_seconds);
  auto progress = [&](int done, int total, double secs) {
    if (done == total || done % std::max(1, total / 20) == 0) {
      std::fprintf(stderr, "gradient statistics: iteration %d/%d  %.1f s  ETA %.0f s\n", done, total, secs,
                   secs / done * (total - done));
      if (ctx) ctx->log({{"event", "gradient_statistics"}, {"iteration", done}, {"iters", total}, {"seconds", secs}});
    }
  };
  const GradStats gs = gradient_statistics(m, c.cal->windows(), nwin, T, pca, o, progress);
  lua_createtable(L, m.n_blocks(), 6);
  for (int l = 0; l < m.n_blocks(); ++l) {
    lua_createtable(L, 0, (int)gs.names[l].size());
    for (size_t j = 0; j < gs.names[l].size(); ++j) {
      lua_createtable(L, 0, 2);
      push_tensor(L, gs.g2[l][j]);
      lua_setfield(L, -2, "g2");
      const std::vector<double> r = row_means(gs.g2[l][j]);
      push_tensor(L, Tensor::from_data({(int64_t)r.size()}, std::vector<float>(r.begin(), r.end())));
      lua_setfield(L, -2, "row");
      lua_setfield(L, -2, gs.names[l][j].c_str());
    }
    lua_rawseti(L, -2, l + 1);
  }
  lua_createtable(L, 0, 3);
  set_field(L, "k", (int64_t)pca.eigenvalues.size());
  set_field(L, "explained", top / pca.total_variance);
  push_numbers(L, pca.eigenvalues);
  lua_setfield(L, -2, "eigenvalues");
  lua_setfield(L, -2, "pca");
  set_field(L, "iters", (int64_t)gs.iters);
  set_field(L, "samples", gs.samples);
  set_field(L, "seconds", gs.seconds);
  set_field(L, "pca_seconds", pca_seconds);
  return 1;
}

// cal:finetune{params=, lr=, ...}: the current block on its quantized-prefix inputs against its
// full-precision outputs (the options and result of blk:finetune, lua_block.cpp).
static int c_finetune(lua_State* L) {
  const char* fn = "finetune";
  LCal& c = check_cal(L, 1, fn);
  if (!is_none_or_nil(L, 2)) check_table(L, 2, fn);
  check_opts(L, 2, fn, {"params", "lr", "betas", "eps", "weight_decay", "epochs", "batch", "shuffle", "seed"});
  const Calibration& cal = *c.cal;
  if (cal.block() >= cal.nblocks()) fail(fn, ": the calibration has passed its last block");
  if (!cal.fp_chain())
    fail(fn, ": this calibration has no full-precision chain (made with fp_chain=false); block finetuning needs its outputs");
  if (!cal.fp_outputs().defined())
    fail(fn, ": block ", cal.block() + 1, " has no full-precision outputs yet (call cal:capture() before cal:finetune())");
  push_block_finetune(L, 2, fn, *c.m, cal.block(), cal.inputs(), cal.fp_outputs(), cal.nsamples(), cal.seqlen());
  return 1;
}

// The site feeding a linear, by name ("q" -> "attn_in").
static int f_input_site(lua_State* L) {
  const std::string n = check_str(L, 1, "input_site");
  if (const LinearSpec* s = kLlama.find(n)) {
    lua_pushstring(L, site_name(s->input));
    return 1;
  }
  fail("input_site: unknown linear '", n, "'");
}

void open_calibration(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities (the most arguments used, self included): lua_util.h.
  register_class(L, kCalMT,
                 {{"capture", qf_guard<c_capture>, 3}, {"advance", qf_guard<c_advance>, 1}, {"block", qf_guard<c_block>, 1},
                  {"save_state", qf_guard<c_save_state>, 2}, {"load_state", qf_guard<c_load_state>, 2},
                  {"nblocks", qf_guard<c_nblocks>, 1}, {"memory_bytes", qf_guard<c_memory_bytes>, 1},
                  {"tokens", qf_guard<c_tokens>, 1}, {"fingerprint", qf_guard<c_fingerprint>, 1}, {"inputs", qf_guard<c_inputs>, 1}, {"activations", qf_guard<c_activations>, 3},
                  {"fp_inputs", qf_guard<c_fp_inputs>, 1}, {"fp_outputs", qf_guard<c_fp_outputs>, 1},
                  {"gradient_statistics", qf_guard<c_gradient_statistics>, 2}, {"finetune", qf_guard<c_finetune>, 2}},
                 udata_gc<LCal>, nullptr);
  set_funcs(L, mod, {{"calibration", qf_guard<f_calibration>, 1}, {"input_site", qf_guard<f_input_site>, 1}});
}

}  // namespace qf::lua
