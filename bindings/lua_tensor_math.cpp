// qforge — Lua bindings of engine/core/tensor_math: elementwise math with numpy broadcasting
// (docs/api/tensor_math.md).
//
// Torch7's convention, as t:add already follows: a method changes the tensor in place and returns
// it (t:abs(), t:clamp(lo, hi), t:cmax(x)); the module function of the same name returns a new
// tensor and leaves its arguments alone (qf.abs(t), qf.clamp(t, lo, hi), qf.cmax(a, b)).
// Comparisons and logical ops always return a new u8 mask (1/0), as Torch7's ByteTensor.
#include <cmath>
#include <limits>

#include "core/tensor_math.h"
#include "lua_util.h"

namespace qf::lua {

// A number or a tensor at `arg`.
struct Operand {
  bool is_number = false;
  float s = 0;
  Tensor t;
};
static Operand operand(lua_State* L, int arg, const char* fn) {
  Operand o;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    o.is_number = true;
    o.s = (float)lua_tonumber(L, arg);
  } else if (is_tensor(L, arg)) {
    o.t = check_tensor(L, arg, fn);
  } else {
    type_error(L, arg, fn, "number or qforge.Tensor");
  }
  return o;
}

// ---- unary: t:abs() in place, qf.abs(t) new ----
template <UnaryOp op>
static int t_unary(lua_State* L) {
  unary_(check_tensor(L, 1, unary_name(op)), op);
  lua_settop(L, 1);
  return 1;
}
template <UnaryOp op>
static int f_unary(lua_State* L) {
  push_tensor(L, unary(check_tensor(L, 1, unary_name(op)), op));
  return 1;
}

// ---- binary with a number or a broadcast tensor ----
template <BinaryOp op>
static int t_binary(lua_State* L) {  // t:pow(x), t:cmin(x), t:cmax(x): in place
  Tensor& t = check_tensor(L, 1, binary_name(op));
  const Operand x = operand(L, 2, binary_name(op));
  if (x.is_number) binary_(t, x.s, op);
  else binary_(t, x.t, op);
  lua_settop(L, 1);
  return 1;
}
template <BinaryOp op>
static int t_mask(lua_State* L) {  // t:lt(x) …: a new u8 mask
  const Tensor& t = check_tensor(L, 1, binary_name(op));
  const Operand x = operand(L, 2, binary_name(op));
  push_tensor(L, x.is_number ? binary(t, x.s, op) : binary(t, x.t, op));
  return 1;
}
template <BinaryOp op>
static int f_binary(lua_State* L) {  // qf.pow(a, b), qf.cmin(a, b) …: new, either side a number
  const char* fn = binary_name(op);
  const Operand a = operand(L, 1, fn), b = operand(L, 2, fn);
  if (a.is_number && b.is_number) fail(fn, ": expected at least one qforge.Tensor, got two numbers");
  push_tensor(L, a.is_number ? binary(a.s, b.t, op) : b.is_number ? binary(a.t, b.s, op) : binary(a.t, b.t, op));
  return 1;
}
static int m_pow(lua_State* L) { return f_binary<BinaryOp::Pow>(L); }  // a ^ b

// ---- clamp: t:clamp(lo, hi) / qf.clamp(t, lo, hi); nil leaves a side open ----
static void clamp_bounds(lua_State* L, int arg, const char* fn, float* lo, float* hi) {
  *lo = is_none_or_nil(L, arg) ? -std::numeric_limits<float>::infinity() : (float)check_num(L, arg, fn);
  *hi = is_none_or_nil(L, arg + 1) ? std::numeric_limits<float>::infinity() : (float)check_num(L, arg + 1, fn);
  if (is_none_or_nil(L, arg) && is_none_or_nil(L, arg + 1)) fail(fn, ": expected a lower bound, an upper bound or both");
}
static int t_clamp(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "clamp");
  float lo, hi;
  clamp_bounds(L, 2, "clamp", &lo, &hi);
  clamp_(t, lo, hi);
  lua_settop(L, 1);
  return 1;
}
static int f_clamp(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "clamp");
  float lo, hi;
  clamp_bounds(L, 2, "clamp", &lo, &hi);
  push_tensor(L, clamp(t, lo, hi));
  return 1;
}

// ---- masks ----
static int t_isnan(lua_State* L) {
  push_tensor(L, isnan_mask(check_tensor(L, 1, "isnan")));
  return 1;
}
static int t_isfinite(lua_State* L) {
  push_tensor(L, isfinite_mask(check_tensor(L, 1, "isfinite")));
  return 1;
}
static int t_logical_not(lua_State* L) {
  push_tensor(L, logical_not(check_tensor(L, 1, "logical_not")));
  return 1;
}
static int t_any(lua_State* L) {
  lua_pushboolean(L, any_nonzero(check_tensor(L, 1, "any")));
  return 1;
}
static int t_all(lua_State* L) {
  lua_pushboolean(L, all_nonzero(check_tensor(L, 1, "all")));
  return 1;
}

// qf.where(mask, a, b): a and b tensors or numbers, broadcast with the mask.
static int f_where(lua_State* L) {
  const Tensor& m = check_tensor(L, 1, "where");
  const Operand a = operand(L, 2, "where"), b = operand(L, 3, "where");
  const Tensor ta = a.is_number ? Tensor::full({}, a.s) : a.t, tb = b.is_number ? Tensor::full({}, b.s) : b.t;
  push_tensor(L, where(m, ta, tb));
  return 1;
}

#define QF_UNARY(name, op) {name, qf_guard<t_unary<UnaryOp::op>>, 1}
#define QF_UNARY_F(name, op) {name, qf_guard<f_unary<UnaryOp::op>>, 1}
void open_tensor_math(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  add_methods(L, kTensorMT,
              {QF_UNARY("abs", Abs), QF_UNARY("sign", Sign), QF_UNARY("sqrt", Sqrt), QF_UNARY("rsqrt", Rsqrt),
               QF_UNARY("exp", Exp), QF_UNARY("log", Log), QF_UNARY("floor", Floor), QF_UNARY("ceil", Ceil),
               QF_UNARY("round", Round), QF_UNARY("neg", Neg), QF_UNARY("square", Square),
               QF_UNARY("reciprocal", Reciprocal), QF_UNARY("sigmoid", Sigmoid), QF_UNARY("tanh", Tanh),
               {"pow", qf_guard<t_binary<BinaryOp::Pow>>, 2},
               {"cmin", qf_guard<t_binary<BinaryOp::Min>>, 2},
               {"cmax", qf_guard<t_binary<BinaryOp::Max>>, 2},
               {"clamp", qf_guard<t_clamp>, 3},
               {"eq", qf_guard<t_mask<BinaryOp::Eq>>, 2},
               {"ne", qf_guard<t_mask<BinaryOp::Ne>>, 2},
               {"lt", qf_guard<t_mask<BinaryOp::Lt>>, 2},
               {"le", qf_guard<t_mask<BinaryOp::Le>>, 2},
               {"gt", qf_guard<t_mask<BinaryOp::Gt>>, 2},
               {"ge", qf_guard<t_mask<BinaryOp::Ge>>, 2},
               {"logical_and", qf_guard<t_mask<BinaryOp::And>>, 2},
               {"logical_or", qf_guard<t_mask<BinaryOp::Or>>, 2},
               {"logical_not", qf_guard<t_logical_not>, 1},
               {"isnan", qf_guard<t_isnan>, 1},
               {"isfinite", qf_guard<t_isfinite>, 1},
               {"any", qf_guard<t_any>, 1},
               {"all", qf_guard<t_all>, 1}});
  // qf.math holds every out-of-place function; the top level holds them too, except `log` (qf.log is
  // the run logger: the natural log of a tensor is qf.math.log(t), or t:clone():log()).
  lua_newtable(L);
  const int math = lua_gettop(L);
  for (int target : {math, mod}) {
    if (target == math) set_funcs(L, target, {QF_UNARY_F("log", Log)});
    set_funcs(L, target,
              {QF_UNARY_F("abs", Abs), QF_UNARY_F("sign", Sign), QF_UNARY_F("sqrt", Sqrt), QF_UNARY_F("rsqrt", Rsqrt),
               QF_UNARY_F("exp", Exp), QF_UNARY_F("floor", Floor), QF_UNARY_F("ceil", Ceil),
               QF_UNARY_F("round", Round), QF_UNARY_F("neg", Neg), QF_UNARY_F("square", Square),
               QF_UNARY_F("reciprocal", Reciprocal), QF_UNARY_F("sigmoid", Sigmoid), QF_UNARY_F("tanh", Tanh),
               {"pow", qf_guard<f_binary<BinaryOp::Pow>>, 2},
               {"cmin", qf_guard<f_binary<BinaryOp::Min>>, 2},
               {"cmax", qf_guard<f_binary<BinaryOp::Max>>, 2},
               {"clamp", qf_guard<f_clamp>, 3},
               {"where", qf_guard<f_where>, 3}});
  }
  lua_setfield(L, mod, "math");
  luaL_getmetatable(L, kTensorMT);
  lua_pushcfunction(L, qf_guard<m_pow>);
  lua_setfield(L, -2, "__pow");
  lua_pop(L, 1);
}
#undef QF_UNARY
#undef QF_UNARY_F

}  // namespace qf::lua
