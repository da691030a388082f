// qforge — a model block in Lua: userdata "qforge.Block" (m:block(b) makes one, lua_model.cpp), and
// decoupleQ's block-wise finetuning (engine/solvers/block_finetune.h):
//   blk:finetune{inputs=, targets=, windows=, params=, lr=, betas=, eps=, weight_decay=, epochs=,
//                batch=, shuffle=, seed=}
//   blk:qlinear(name)              the linear's QLinear (codes + grid + outliers), nil when it has none
//   blk:index()                    the 1-based block index
// cal:finetune (lua_calibration.cpp) runs the same finetune through push_block_finetune. Both return
// {losses = {before, epoch 1, ...}, after =, seconds =, steps =, params = floats trained,
// epoch_seconds = {...}} and print one line per epoch on stderr.
#include <cstdio>

#include "solvers/block_finetune.h"
#include "lua_util.h"
#include "runner.h"

namespace qf::lua {

static constexpr const char* kBlockMT = "qforge.Block";


struct LBlock {
  std::shared_ptr<Model> m;
  int index = 0;  // 0-based
};

static LBlock& check_block(lua_State* L, int arg, const char* fn) {
  return *static_cast<LBlock*>(check_udata(L, arg, kBlockMT, fn));
}

// Options shared by blk:finetune and cal:finetune (the table at `arg`, already checked by check_opts).
static FinetuneOptions finetune_options(lua_State* L, int arg, const char* fn) {
  FinetuneOptions o;
  lua_getfield(L, arg, "params");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TTABLE) fail(fn, ": option 'params' must be a list of names (scales, zeros, norms, biases)");
    o.params.clear();
    const lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, -1, i);
      if (lua_type(L, -1) != LUA_TSTRING) fail(fn, ": option 'params' entry ", i, " is not a name (scales, zeros, norms, biases)");
      o.params.push_back(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  o.lr = opt_field_num(L, arg, "lr", fn, o.lr);
  lua_getfield(L, arg, "betas");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TTABLE || lua_rawlen(L, -1) != 2) fail(fn, ": option 'betas' must be {beta1, beta2}");
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    if (lua_type(L, -2) != LUA_TNUMBER || lua_type(L, -1) != LUA_TNUMBER) fail(fn, ": option 'betas' must be {beta1, beta2} (two numbers)");
    o.beta1 = lua_tonumber(L, -2);
    o.beta2 = lua_tonumber(L, -1);
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  o.eps = opt_field_num(L, arg, "eps", fn, o.eps);
  o.weight_decay = opt_field_num(L, arg, "weight_decay", fn, o.weight_decay);
  const int64_t epochs = opt_field_int(L, arg, "epochs", fn, o.epochs), batch = opt_field_int(L, arg, "batch", fn, o.batch);
  if (epochs < 1 || epochs > 1000000) fail(fn, ": option 'epochs' must be in 1..1000000, got ", epochs);
  if (batch < 1 || batch > (1 << 30)) fail(fn, ": option 'batch' (windows per step) must be >= 1, got ", batch);
  o.epochs = (int)epochs;
  o.batch = (int)batch;
  o.shuffle = opt_field_bool(L, arg, "shuffle", fn, o.shuffle);
  RunContext* ctx = run_context(L);
  o.seed = (uint64_t)opt_field_int(L, arg, "seed", fn, ctx ? ctx->seed : 0);
  return o;
}

// stderr and the run's log.jsonl
static SolverLog finetune_log(lua_State* L) {
  RunContext* ctx = run_context(L);
  return [ctx](const std::string& event, const std::string& detail) {
    std::fprintf(stderr, "finetune: %s\n", detail.c_str());
    if (ctx) {
      try {
        ctx->log({{"event", "finetune_" + event}, {"detail", detail}});
      } catch (...) {  // logging must never fail a finetune
      }
    }
  };
}

static FinetuneResult run_finetune(lua_State* L, const char* fn, Model& m, int layer, const Tensor& x, const Tensor& y,
                                   int B, int T, const FinetuneOptions& o) {
  try {
    o.validate(B);
  } catch (const Error& e) {
    fail(fn, ": ", e.what());
  }
  return block_finetune(m, layer, x, y, B, T, o, finetune_log(L));
}

static void push_result(lua_State* L, const FinetuneResult& r) {
  lua_createtable(L, 0, 6);
  lua_createtable(L, (int)r.epoch_loss.size() + 1, 0);
  lua_pushnumber(L, r.loss_before);
  lua_rawseti(L, -2, 1);
  for (size_t i = 0; i < r.epoch_loss.size(); ++i) {
    lua_pushnumber(L, r.epoch_loss[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 2);
  }
  lua_setfield(L, -2, "losses");
  push_numbers(L, r.epoch_seconds);
  lua_setfield(L, -2, "epoch_seconds");
  set_field(L, "after", r.loss_after);
  set_field(L, "seconds", r.seconds);
  set_field(L, "steps", r.steps);
  set_field(L, "params", r.nparams);
}

static int b_index(lua_State* L) {
  lua_pushinteger(L, check_block(L, 1, "index").index + 1);
  return 1;
}

static int b_qlinear(lua_State* L) {
  LBlock& b = check_block(L, 1, "qlinear");
  const Linear& lin = b.m->block(b.index).linear(check_str(L, 2, "qlinear"));
  if (!lin.quant) {
    lua_pushnil(L);
    return 1;
  }
  QuantizedLinear q = *lin.quant;
  q.codes = q.codes.clone();  // a copy: editing it from Lua never touches the model's codes
  push_qlinear(L, std::move(q));
  return 1;
}

static int b_tostring(lua_State* L) {
  LBlock& b = check_block(L, 1, "__tostring");
  push_str(L, "qforge.Block " + std::to_string(b.index + 1) + " of " + std::to_string(b.m->n_blocks()));
  return 1;
}

// blk:finetune{inputs=, targets=, windows=, ...}
static int b_finetune(lua_State* L) {
  const char* fn = "finetune";
  LBlock& b = check_block(L, 1, fn);
  check_table(L, 2, fn);
  check_opts(L, 2, fn, {"inputs", "targets", "windows", "params", "lr", "betas", "eps", "weight_decay", "epochs", "batch",
                        "shuffle", "seed"});
  lua_getfield(L, 2, "inputs");
  if (!is_tensor(L, -1)) fail(fn, ": option 'inputs' must be a Tensor [windows·T, dim], got ", type_name(L, -1));
  const Tensor x = check_tensor(L, lua_gettop(L), fn);
  lua_pop(L, 1);
  lua_getfield(L, 2, "targets");
  if (!is_tensor(L, -1)) fail(fn, ": option 'targets' must be a Tensor [windows·T, dim], got ", type_name(L, -1));
  const Tensor y = check_tensor(L, lua_gettop(L), fn);
  lua_pop(L, 1);
  const int64_t B = opt_field_int(L, 2, "windows", fn, 0);
  if (B < 1) fail(fn, ": option 'windows' (the number of windows in inputs) is required and must be >= 1");
  if (x.dim() != 2) fail(fn, ": option 'inputs' must be a 2-d Tensor [windows·T, dim], got ", shape_str(x.shape()));
  if (x.size(0) % B != 0) fail(fn, ": option 'windows' = ", B, " does not divide the ", x.size(0), " rows of inputs");
  const int64_t T = x.size(0) / B;
  push_block_finetune(L, 2, fn, *b.m, b.index, x, y, (int)B, (int)T);
  return 1;
}

void open_block(lua_State* L, int mod) {
  // Arities (the most arguments used, self included): lua_util.h.
  register_class(L, kBlockMT,
                 {{"finetune", qf_guard<b_finetune>, 2}, {"qlinear", qf_guard<b_qlinear>, 2}, {"index", qf_guard<b_index>, 1}},
                 udata_gc<LBlock>, qf_guard<b_tostring>);
  (void)mod;
}

// Exported through lua_util.h for other binding files.
void push_block(lua_State* L, std::shared_ptr<Model> m, int index) { new_udata<LBlock>(L, kBlockMT, LBlock{std::move(m), index}); }
void push_block_finetune(lua_State* L, int opts, const char* fn, Model& m, int layer, const Tensor& x, const Tensor& y, int B,
                         int T) {
  const FinetuneOptions o = lua_type(L, opts) == LUA_TTABLE ? finetune_options(L, opts, fn) : FinetuneOptions{};
  push_result(L, run_finetune(L, fn, m, layer, x, y, B, T, o));
}

}  // namespace qf::lua
