// qforge — the Lua RNG: userdata "qforge.Rng" wrapping qf::Rng. Recipes own their RNGs:
// qf.rng() is seeded from the run's seed (seed=N on the command line), qf.rng(s) from s.
#include "lua_util.h"
#include "core/rng.h"
#include "runner.h"

namespace qf::lua {

static constexpr const char* kRngMT = "qforge.Rng";

static Rng& check_rng(lua_State* L, int arg, const char* fn) { return *static_cast<Rng*>(check_udata(L, arg, kRngMT, fn)); }

static int f_rng(lua_State* L) {
  int64_t seed = 0;
  if (is_none_or_nil(L, 1)) {
    RunContext* ctx = run_context(L);
    seed = ctx ? ctx->seed : 0;
  } else {
    seed = check_int(L, 1, "rng");
  }
  new_udata<Rng>(L, kRngMT, Rng((uint64_t)seed));
  return 1;
}

static int r_uniform(lua_State* L) {
  Rng& g = check_rng(L, 1, "uniform");
  const double lo = is_none_or_nil(L, 2) ? 0.0 : check_num(L, 2, "uniform");
  const double hi = is_none_or_nil(L, 3) ? 1.0 : check_num(L, 3, "uniform");
  lua_pushnumber(L, lo + (hi - lo) * g.uniform());
  return 1;
}

static int r_randint(lua_State* L) {
  Rng& g = check_rng(L, 1, "randint");
  lua_pushinteger(L, g.randint(check_int(L, 2, "randint"), check_int(L, 3, "randint")));
  return 1;
}

static int r_normal(lua_State* L) {
  Rng& g = check_rng(L, 1, "normal");
  const double mean = is_none_or_nil(L, 2) ? 0.0 : check_num(L, 2, "normal");
  const double sd = is_none_or_nil(L, 3) ? 1.0 : check_num(L, 3, "normal");
  lua_pushnumber(L, mean + sd * g.normal());
  return 1;
}

// g:rand(shape) / g:randn(shape): f32 tensors of uniform [0,1) / standard normal draws,
// filled in row-major order.
template <bool normal>
static int r_tensor(lua_State* L) {
  const char* fn = normal ? "randn" : "rand";
  Rng& g = check_rng(L, 1, fn);
  int next = 0;
  Tensor t = Tensor::empty(shape_arg(L, 2, fn, &next));
  if (lua_gettop(L) >= next) too_many_args(L, next, fn);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = (float)(normal ? g.normal() : g.uniform());
  push_tensor(L, std::move(t));
  return 1;
}

void open_rng(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities (the most arguments used, self included): lua_util.h. rand/randn take a shape
  // given as integers too and check the count themselves.
  register_class(L, kRngMT,
                 {{"uniform", qf_guard<r_uniform>, 3},
                  {"randint", qf_guard<r_randint>, 3},
                  {"normal", qf_guard<r_normal>, 3},
                  {"rand", qf_guard<r_tensor<false>>, kVariadic},
                  {"randn", qf_guard<r_tensor<true>>, kVariadic}},
                 udata_gc<Rng>, nullptr);
  set_funcs(L, mod, {{"rng", qf_guard<f_rng>, 1}});
}

}  // namespace qf::lua
