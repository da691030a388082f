// qforge — the Lua Tensor: userdata "qforge.Tensor" holding a qf::Tensor (a view).
//
// Indices and dimensions are 1-based in Lua (Torch7 convention) and converted here;
// bounds are checked here too, so messages speak in the caller's (1-based) terms.
// Arithmetic is f32 only and lives in engine/tensor_ops.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>

#include "lua_util.h"
#include "runner.h"
#include "formats/safetensors.h"
#include "core/tensor_ops.h"
#include "core/tensor_math.h"

namespace qf::lua {

static std::atomic<int64_t> g_live{0};
int64_t live_tensors() { return g_live.load(); }

// Lua's collector sees only the small Tensor handle, not the storage behind it, so garbage
// tensors would pile up (GBs in a sequential pipeline over a 135M model). Pace it: every new
// tensor handle counts as an allocation of its bytes (views count too — pacing, not accounting).
void push_tensor(lua_State* L, Tensor t) {
  const int64_t kb = t.defined() ? t.numel() * (int64_t)dtype_size(t.dtype()) / 1024 : 0;
  new_udata<Tensor>(L, kTensorMT, std::move(t));
  ++g_live;
  if (kb >= 64) lua_gc(L, LUA_GCSTEP, (int)std::min<int64_t>(kb, 1 << 30));
}

bool is_tensor(lua_State* L, int idx) { return luaL_testudata(L, idx, kTensorMT) != nullptr; }

Tensor& check_tensor(lua_State* L, int arg, const char* fn) {
  return *static_cast<Tensor*>(check_udata(L, arg, kTensorMT, fn));
}

static int t_gc(lua_State* L) {
  if (luaL_testudata(L, 1, kTensorMT)) --g_live;
  return udata_gc<Tensor>(L);
}

// ---- 1-based argument conversion ----------------------------------------------------
// A 1-based dimension argument -> 0-based.
static int dim_arg(lua_State* L, int arg, const char* fn, const Tensor& t) {
  int64_t d = check_int(L, arg, fn);
  if (d < 1 || d > t.dim())
    fail(fn, ": dimension ", d, " out of range for a ", t.dim(), "-d tensor of shape ", shape_str(t.shape()),
         t.dim() ? " (valid: 1.." + std::to_string(t.dim()) + ")" : std::string());
  return (int)d - 1;
}

// 1-based indices at stack positions first..first+n-1 -> 0-based, bounds-checked.
static std::vector<int64_t> index_args(lua_State* L, int first, int n, const char* fn, const Tensor& t) {
  if (n != t.dim())
    fail(fn, ": expected ", t.dim(), " indices for a tensor of shape ", shape_str(t.shape()), ", got ", n);
  std::vector<int64_t> idx(n);
  for (int d = 0; d < n; ++d) {
    int64_t i = check_int(L, first + d, fn);
    if (i < 1 || i > t.size(d))
      fail(fn, ": index ", i, " out of bounds for dimension ", d + 1, " of size ", t.size(d), " (shape ",
           shape_str(t.shape()), ")");
    idx[d] = i - 1;
  }
  return idx;
}

// t op= x, where x (stack index `arg`) is a number or an f32 tensor that broadcasts to t's shape
// (numpy's rule, engine/core/tensor_math.h).
static BinaryOp to_binary(BinOp op) {
  switch (op) {
    case BinOp::Add: return BinaryOp::Add;
    case BinOp::Sub: return BinaryOp::Sub;
    case BinOp::Mul: return BinaryOp::Mul;
    case BinOp::Div: return BinaryOp::Div;
  }
  return BinaryOp::Add;
}
static void inplace(lua_State* L, Tensor& t, int arg, const char* fn, BinOp op, float alpha = 1.f) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    apply_(t, op, alpha * (float)lua_tonumber(L, arg));
    return;
  }
  if (!is_tensor(L, arg)) type_error(L, arg, fn, "number or qforge.Tensor");
  const Tensor& x = check_tensor(L, arg, fn);
  if (x.shape() == t.shape() && x.dtype() == DType::F32) {
    apply_(t, op, x, alpha);
    return;
  }
  binary_(t, alpha == 1.f ? x : binary(x, alpha, BinaryOp::Mul), to_binary(op));
}

static TensorStats nonempty_stats(const Tensor& t, const char* fn) {
  if (!t.defined() || t.numel() == 0) fail(fn, ": empty tensor");
  return tensor_stats(t);
}

// ---- methods ------------------------------------------------------------------------
static int t_get(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "get");
  std::vector<int64_t> idx = index_args(L, 2, lua_gettop(L) - 1, "get", t);
  lua_pushnumber(L, t.get(idx.data(), (int)idx.size()));
  return 1;
}

static int t_set(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "set");
  const int top = lua_gettop(L);
  if (top < 2) fail("set: expected indices and a value");
  float v = (float)check_num(L, top, "set");
  std::vector<int64_t> idx = index_args(L, 2, top - 2, "set", t);
  t.set(idx.data(), (int)idx.size(), v);
  lua_settop(L, 1);
  return 1;
}

static Tensor narrow_impl(lua_State* L, const Tensor& t, int d, int arg, const char* fn) {
  int64_t start = check_int(L, arg, fn), len = check_int(L, arg + 1, fn);
  const int64_t n = t.size(d);
  if (start < 1 || len < 0 || start - 1 + len > n)
    fail(fn, ": range start ", start, ", length ", len, " out of bounds for dimension ", d + 1, " of size ", n,
         " (shape ", shape_str(t.shape()), ")");
  return t.narrow(d, start - 1, len);
}

static int t_narrow(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "narrow");
  int d = dim_arg(L, 2, "narrow", t);
  push_tensor(L, narrow_impl(L, t, d, 3, "narrow"));
  return 1;
}

static int t_rows(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "rows");
  if (t.dim() < 1) fail("rows: tensor of shape ", shape_str(t.shape()), " has no rows");
  push_tensor(L, narrow_impl(L, t, 0, 2, "rows"));
  return 1;
}

static int t_cols(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "cols");
  if (t.dim() < 2) fail("cols: expected a tensor with at least 2 dimensions, got shape ", shape_str(t.shape()));
  push_tensor(L, narrow_impl(L, t, 1, 2, "cols"));
  return 1;
}

static int t_select(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "select");
  int d = dim_arg(L, 2, "select", t);
  int64_t i = check_int(L, 3, "select");
  if (i < 1 || i > t.size(d))
    fail("select: index ", i, " out of bounds for dimension ", d + 1, " of size ", t.size(d), " (shape ",
         shape_str(t.shape()), ")");
  push_tensor(L, t.select(d, i - 1));
  return 1;
}

static int t_transpose(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "transpose");
  int d0 = dim_arg(L, 2, "transpose", t), d1 = dim_arg(L, 3, "transpose", t);
  push_tensor(L, t.transpose(d0, d1));
  return 1;
}

static int t_t(lua_State* L) {
  push_tensor(L, check_tensor(L, 1, "t").t());
  return 1;
}

static int t_view(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "view");
  int next = 0;
  const Shape s = shape_arg(L, 2, "view", &next);
  if (lua_gettop(L) >= next) too_many_args(L, next, "view");
  push_tensor(L, t.view(s));
  return 1;
}

// t:expand{...} / t:expand(a, b): numpy broadcasting as a view (size-1 dims repeat; -1 keeps a size).
static int t_expand(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "expand");
  int next = 0;
  const Shape s = shape_arg(L, 2, "expand", &next);
  if (lua_gettop(L) >= next) too_many_args(L, next, "expand");
  push_tensor(L, t.expand(s));
  return 1;
}

static int t_is_expanded(lua_State* L) {
  lua_pushboolean(L, check_tensor(L, 1, "is_expanded").is_expanded());
  return 1;
}

static int t_contiguous(lua_State* L) {
  push_tensor(L, check_tensor(L, 1, "contiguous").contiguous());
  return 1;
}

static int t_clone(lua_State* L) {
  push_tensor(L, check_tensor(L, 1, "clone").clone());
  return 1;
}

static int t_copy(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "copy");
  const Tensor& src = check_tensor(L, 2, "copy");
  t.copy_(src);
  lua_settop(L, 1);
  return 1;
}

static int t_fill(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "fill");
  t.fill_((float)check_num(L, 2, "fill"));
  lua_settop(L, 1);
  return 1;
}

static int t_zero(lua_State* L) {
  check_tensor(L, 1, "zero").fill_(0.f);
  lua_settop(L, 1);
  return 1;
}

static int t_to(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "to");
  push_tensor(L, t.to(dtype_from_name(check_str(L, 2, "to"))));
  return 1;
}

static int t_dtype(lua_State* L) {
  lua_pushstring(L, dtype_name(check_tensor(L, 1, "dtype").dtype()));
  return 1;
}

static int t_shape(lua_State* L) {
  push_shape(L, check_tensor(L, 1, "shape").shape());
  return 1;
}

static int t_size(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "size");
  if (is_none_or_nil(L, 2)) {
    push_shape(L, t.shape());
  } else {
    lua_pushinteger(L, t.size(dim_arg(L, 2, "size", t)));
  }
  return 1;
}

static int t_dim(lua_State* L) {
  lua_pushinteger(L, check_tensor(L, 1, "dim").dim());
  return 1;
}

static int t_numel(lua_State* L) {
  lua_pushinteger(L, check_tensor(L, 1, "numel").numel());
  return 1;
}

static int t_is_contiguous(lua_State* L) {
  lua_pushboolean(L, check_tensor(L, 1, "is_contiguous").is_contiguous());
  return 1;
}

static int t_same_storage(lua_State* L) {
  const Tensor& a = check_tensor(L, 1, "same_storage");
  const Tensor& b = check_tensor(L, 2, "same_storage");
  lua_pushboolean(L, a.same_storage(b));
  return 1;
}

static int t_item(lua_State* L) {
  lua_pushnumber(L, check_tensor(L, 1, "item").item());
  return 1;
}

// Nested tables of dimension d from values v starting at *k.
static void push_nested(lua_State* L, const Shape& s, size_t d, const std::vector<float>& v, size_t* k) {
  need_stack(L, 2);
  if (d == s.size()) {
    lua_pushnumber(L, v[(*k)++]);
    return;
  }
  lua_createtable(L, (int)s[d], 0);
  for (int64_t i = 0; i < s[d]; ++i) {
    push_nested(L, s, d + 1, v, k);
    lua_rawseti(L, -2, i + 1);
  }
}

static int t_to_table(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "to_table");
  const std::vector<float> v = t.to_vector();
  size_t k = 0;
  push_nested(L, t.shape(), 0, v, &k);
  return 1;
}

// ---- reductions: t:sum([dim [, keepdim]]), mean, min, max; t:norm([p [, dim [, keepdim]]]) ----
// Without a dimension: one number over all values (f64). With one: an f32 tensor (engine/tensor_ops).
// The optional (dim, keepdim) at stack positions arg, arg + 1 -> 0-based dim, or -1 when absent.
static int reduce_dim_arg(lua_State* L, int arg, const char* fn, const Tensor& t, bool* keepdim) {
  *keepdim = false;
  if (is_none_or_nil(L, arg)) {
    if (!is_none_or_nil(L, arg + 1)) arg_error(L, arg + 1, fn, "keepdim given without a dimension");
    return -1;
  }
  const int d = dim_arg(L, arg, fn, t);
  if (!is_none_or_nil(L, arg + 1)) *keepdim = check_bool(L, arg + 1, fn);
  return d;
}

// min/max along a dimension return (values, indices): indices 1-based, as an i32 tensor.
static int push_extremum(lua_State* L, ArgExtremum r) {
  int32_t* ix = r.indices.data<int32_t>();
  for (int64_t k = 0; k < r.indices.numel(); ++k) ++ix[k];
  push_tensor(L, std::move(r.values));
  push_tensor(L, std::move(r.indices));
  return 2;
}

static int t_sum(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "sum");
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, "sum", t, &kd);
  if (d < 0) lua_pushnumber(L, tensor_stats(t).sum);
  else push_tensor(L, sum_dim(t, d, kd));
  return 1;
}
static int t_mean(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "mean");
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, "mean", t, &kd);
  if (d < 0) lua_pushnumber(L, nonempty_stats(t, "mean").mean());
  else push_tensor(L, mean_dim(t, d, kd));
  return 1;
}
static int t_min(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "min");
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, "min", t, &kd);
  if (d >= 0) return push_extremum(L, min_dim(t, d, kd));
  lua_pushnumber(L, nonempty_stats(t, "min").min);
  return 1;
}
static int t_max(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "max");
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, "max", t, &kd);
  if (d >= 0) return push_extremum(L, max_dim(t, d, kd));
  lua_pushnumber(L, nonempty_stats(t, "max").max);
  return 1;
}
static int t_norm(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "norm");
  const double p = is_none_or_nil(L, 2) ? 2.0 : check_num(L, 2, "norm");
  if (!(p > 0)) arg_error(L, 2, "norm", "p must be > 0 (or math.huge)");
  bool kd = false;
  const int d = reduce_dim_arg(L, 3, "norm", t, &kd);
  if (d >= 0) push_tensor(L, norm_dim(t, p, d, kd));
  else lua_pushnumber(L, p == 2 ? tensor_stats(t).norm() : norm_all(t, p));
  return 1;
}
// t:diag(): a square 2-d tensor's diagonal as a new 1-d f32 tensor (Σ's column importances), or a
// 1-d tensor as a new diagonal matrix (Torch7's diag without an offset).
static int t_diag(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "diag");
  if (t.dim() == 2 && t.size(0) == t.size(1)) {
    const int64_t n = t.size(0);
    Tensor d = Tensor::empty({n});
    for (int64_t i = 0; i < n; ++i) d.f32()[i] = t.get({i, i});
    push_tensor(L, d);
  } else if (t.dim() == 1) {
    const int64_t n = t.size(0);
    Tensor d = Tensor::zeros({n, n});
    for (int64_t i = 0; i < n; ++i) d.f32()[i * n + i] = t.get({i});
    push_tensor(L, d);
  } else {
    fail("diag: expected a square 2-d or a 1-d tensor, got ", shape_str(t.shape()));
  }
  return 1;
}

static int t_abs_max(lua_State* L) {
  lua_pushnumber(L, nonempty_stats(check_tensor(L, 1, "abs_max"), "abs_max").absmax);
  return 1;
}

// In place, returning self: t:add(x [, alpha]) is t += alpha·x.
static int t_add(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "add");
  const float alpha = is_none_or_nil(L, 3) ? 1.f : (float)check_num(L, 3, "add");
  inplace(L, t, 2, "add", BinOp::Add, alpha);
  lua_settop(L, 1);
  return 1;
}
template <BinOp op>
static int t_inplace(lua_State* L) {
  inplace(L, check_tensor(L, 1, binop_name(op)), 2, binop_name(op), op);
  lua_settop(L, 1);
  return 1;
}

static int t_matmul(lua_State* L) {
  push_tensor(L, matmul(check_tensor(L, 1, "matmul"), check_tensor(L, 2, "matmul")));
  return 1;
}

// ---- metamethods --------------------------------------------------------------------
// Allocating a op b, where one side is a tensor and the other a number or a tensor; two tensors
// broadcast (numpy's rule).
template <BinOp op>
static int binop(lua_State* L) {
  static const std::string fn = std::string("__") + binop_name(op);
  Tensor r;
  if (is_tensor(L, 1) && is_tensor(L, 2)) {
    r = binary(check_tensor(L, 1, fn.c_str()), check_tensor(L, 2, fn.c_str()), to_binary(op));
  } else if (is_tensor(L, 1)) {
    r = binary(check_tensor(L, 1, fn.c_str()), (float)check_num(L, 2, fn.c_str()), to_binary(op));
  } else {
    r = binary((float)check_num(L, 1, fn.c_str()), check_tensor(L, 2, fn.c_str()), to_binary(op));
  }
  push_tensor(L, std::move(r));
  return 1;
}

static int m_unm(lua_State* L) {
  Tensor r = check_tensor(L, 1, "__unm").clone();
  neg_(r);
  push_tensor(L, std::move(r));
  return 1;
}

static int m_len(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "__len");
  lua_pushinteger(L, t.dim() ? t.size(0) : 0);
  return 1;
}

static int m_tostring(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "__tostring");
  std::string s = std::string("qforge.Tensor ") + dtype_name(t.dtype()) + " " + shape_str(t.shape());
  if (!t.is_contiguous()) s += " (non-contiguous view)";
  const int64_t n = t.numel(), shown = std::min<int64_t>(n, 8);
  std::vector<float> v;
  if (shown > 0) v = t.contiguous().view({-1}).narrow(0, 0, shown).to_vector();
  s += " {";
  char buf[32];
  for (int64_t i = 0; i < shown; ++i) {
    std::snprintf(buf, sizeof buf, "%s%.6g", i ? ", " : "", v[i]);
    s += buf;
  }
  s += n > shown ? ", ...}" : "}";
  push_str(L, s);
  return 1;
}

// ---- module functions ---------------------------------------------------------------
// Shape of a nested table of numbers: follow the first elements down to a number.
static Shape nested_shape(lua_State* L, int idx) {
  Shape shape;
  need_stack(L, 2);
  lua_pushvalue(L, idx);
  while (lua_type(L, -1) == LUA_TTABLE) {
    const int64_t n = (int64_t)lua_rawlen(L, -1);
    shape.push_back(n);
    if (n == 0) break;
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  return shape;
}

// Checks that the value at idx is a table of shape[d..] all the way down (not ragged).
static void check_nested(lua_State* L, int idx, const Shape& shape, size_t d, const std::string& where) {
  idx = lua_absindex(L, idx);
  need_stack(L, 2);
  const char* at = where.empty() ? "the top level" : where.c_str();
  if (d == shape.size()) {
    if (lua_type(L, idx) != LUA_TNUMBER)
      fail("qf.tensor: expected a number at ", at, ", got ", luaL_typename(L, idx), " (ragged or non-numeric table)");
    return;
  }
  if (lua_type(L, idx) != LUA_TTABLE)
    fail("qf.tensor: ragged nested table: expected a table of ", shape[d], " elements at ", at, ", got ",
         luaL_typename(L, idx));
  const int64_t n = (int64_t)lua_rawlen(L, idx);
  if (n != shape[d])
    fail("qf.tensor: ragged nested table: expected ", shape[d], " elements at ", at, ", got ", n);
  for (int64_t i = 1; i <= n; ++i) {
    lua_rawgeti(L, idx, i);
    check_nested(L, -1, shape, d + 1, where + "[" + std::to_string(i) + "]");
    lua_pop(L, 1);
  }
}

static void nested_values(lua_State* L, int idx, std::vector<float>& out) {
  idx = lua_absindex(L, idx);
  need_stack(L, 2);
  if (lua_type(L, idx) == LUA_TNUMBER) {
    out.push_back((float)lua_tonumber(L, idx));
    return;
  }
  const lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  for (lua_Integer i = 1; i <= n; ++i) {
    lua_rawgeti(L, idx, i);
    nested_values(L, -1, out);
    lua_pop(L, 1);
  }
}

// qf.tensor(nested_table [, dtype])
static int f_tensor(lua_State* L) {
  if (lua_type(L, 1) != LUA_TTABLE && lua_type(L, 1) != LUA_TNUMBER) type_error(L, 1, "tensor", "table");
  const Shape shape = nested_shape(L, 1);
  check_nested(L, 1, shape, 0, "");
  std::vector<float> v;
  nested_values(L, 1, v);
  Tensor t = Tensor::from_data(shape, v);
  if (!is_none_or_nil(L, 2)) t = t.to(dtype_from_name(check_str(L, 2, "tensor")));
  push_tensor(L, std::move(t));
  return 1;
}

// qf.zeros(shape [, dtype]), qf.ones(...), qf.full(shape, v [, dtype])
static Tensor make_filled(lua_State* L, const char* fn, bool has_value, float value) {
  int next = 0;
  Shape s = shape_arg(L, 1, fn, &next);
  for (int64_t x : s)
    if (x < 0) fail(fn, ": invalid shape ", shape_str(s));
  if (has_value) value = (float)check_num(L, next++, fn);
  DType dt = is_none_or_nil(L, next) ? DType::F32 : dtype_from_name(check_str(L, next, fn));
  if (lua_gettop(L) > next) too_many_args(L, next + 1, fn);
  Tensor t = Tensor::empty(s, dt);
  if (value != 0.f) t.fill_(value);
  return t;
}

static int f_zeros(lua_State* L) {
  push_tensor(L, make_filled(L, "zeros", false, 0.f));
  return 1;
}
static int f_ones(lua_State* L) {
  push_tensor(L, make_filled(L, "ones", false, 1.f));
  return 1;
}
static int f_full(lua_State* L) {
  push_tensor(L, make_filled(L, "full", true, 0.f));
  return 1;
}
static int f_is_tensor(lua_State* L) {
  lua_pushboolean(L, is_tensor(L, 1));
  return 1;
}

// safetensors dtype names of the storage types (docs/formats.md, "Loading"), both directions.
static const struct { DType dt; const char* name; } kStDtypes[] = {
    {DType::F32, "F32"}, {DType::F16, "F16"}, {DType::BF16, "BF16"},
    {DType::I8, "I8"},   {DType::U8, "U8"},   {DType::I32, "I32"}};
static const char* st_dtype(DType dt) {
  for (const auto& e : kStDtypes)
    if (e.dt == dt) return e.name;
  return "";
}

// qf.save_tensors(path, {name = Tensor, ...} [, {key = "string", ...}]): one safetensors file,
// each tensor in its own dtype, written atomically (temporary + rename). Names are sorted so
// the same table always gives the same bytes.
static int f_save_tensors(lua_State* L) {
  const char* fn = "save_tensors";
  const std::string path = check_str(L, 1, fn);
  check_table(L, 2, fn);
  std::map<std::string, Tensor> named;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING) arg_error(L, 2, fn, "tensor names must be strings");
    std::string name = lua_tostring(L, -2);
    if (!is_tensor(L, -1)) arg_error(L, 2, fn, "'" + name + "' is a " + type_name(L, -1) + ", not a qforge.Tensor");
    named[name] = *static_cast<Tensor*>(lua_touserdata(L, -1));
    lua_pop(L, 1);
  }
  std::map<std::string, std::string> meta;
  if (!is_none_or_nil(L, 3)) {
    check_table(L, 3, fn);
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        arg_error(L, 3, fn, "metadata must map strings to strings");
      meta[lua_tostring(L, -2)] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
  }
  std::vector<SafetensorsEntry> entries;
  for (auto& [name, t] : named) {
    const Tensor c = t.contiguous();
    SafetensorsEntry e{name, st_dtype(c.dtype()), c.shape(), {}, {}};
    e.bytes.assign(static_cast<const char*>(c.raw()), (size_t)c.numel() * dtype_size(c.dtype()));
    entries.push_back(std::move(e));
  }
  lua_pushinteger(L, (lua_Integer)safetensors_write(path, entries, meta));
  return 1;
}

// qf.load_tensors(path) -> {name = Tensor, ...}, {metadata}: the reader validates every
// header field and offset against the file before anything is read.
static int f_load_tensors(lua_State* L) {
  const std::string path = check_str(L, 1, "load_tensors");
  const SafetensorsFile f = safetensors_open(path);
  if (RunContext* ctx = run_context(L)) ctx->note_input(path);  // fingerprinted: qforge rerun checks it
  std::vector<std::pair<std::string, Tensor>> out;
  for (const TensorSource& ts : f.tensors) {
    const auto* e = std::find_if(std::begin(kStDtypes), std::end(kStDtypes), [&](const auto& x) { return ts.dtype == x.name; });
    if (e == std::end(kStDtypes))
      fail("file '", path, "': tensor '", ts.name, "' has dtype ", ts.dtype, ", which a qforge.Tensor cannot hold");
    const DType dt = e->dt;
    // The reader has checked nbytes = dtype × shape and that the bytes lie in the file, so this
    // allocation is bounded by the file's size; checked again here before allocating.
    uint64_t numel = 1;
    for (int64_t d : ts.shape) numel *= (uint64_t)d;
    if (ts.nbytes != numel * dtype_size(dt))
      fail("file '", path, "': tensor '", ts.name, "' has ", ts.nbytes, " bytes for shape ", shape_str(ts.shape));
    Tensor t = Tensor::empty(ts.shape, dt);
    if (ts.nbytes) std::memcpy(t.raw(), ts.file->at(ts.offset, ts.nbytes, "tensor '" + ts.name + "'"), ts.nbytes);
    if (dt == DType::F32)
      for (int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(t.f32()[i])) fail("file '", path, "': tensor '", ts.name, "' holds a non-finite value");
    out.emplace_back(ts.name, std::move(t));
  }
  need_stack(L, 4);
  lua_createtable(L, 0, (int)out.size());
  for (auto& [name, t] : out) {
    push_tensor(L, std::move(t));
    lua_setfield(L, -2, name.c_str());
  }
  lua_createtable(L, 0, (int)f.metadata.size());
  for (auto& [k, v] : f.metadata) set_field(L, k.c_str(), v);
  return 2;
}

void open_tensor(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities count self. get/set/view take a variable count and check it themselves.
  register_class(L, kTensorMT,
                 {{"get", qf_guard<t_get>, kVariadic},
                  {"set", qf_guard<t_set>, kVariadic},
                  {"narrow", qf_guard<t_narrow>, 4},
                  {"select", qf_guard<t_select>, 3},
                  {"rows", qf_guard<t_rows>, 3},
                  {"cols", qf_guard<t_cols>, 3},
                  {"transpose", qf_guard<t_transpose>, 3},
                  {"t", qf_guard<t_t>, 1},
                  {"view", qf_guard<t_view>, kVariadic},
                  {"expand", qf_guard<t_expand>, kVariadic},
                  {"is_expanded", qf_guard<t_is_expanded>, 1},
                  {"contiguous", qf_guard<t_contiguous>, 1},
                  {"clone", qf_guard<t_clone>, 1},
                  {"copy", qf_guard<t_copy>, 2},
                  {"fill", qf_guard<t_fill>, 2},
                  {"zero", qf_guard<t_zero>, 1},
                  {"to", qf_guard<t_to>, 2},
                  {"dtype", qf_guard<t_dtype>, 1},
                  {"shape", qf_guard<t_shape>, 1},
                  {"size", qf_guard<t_size>, 2},
                  {"dim", qf_guard<t_dim>, 1},
                  {"numel", qf_guard<t_numel>, 1},
                  {"is_contiguous", qf_guard<t_is_contiguous>, 1},
                  {"same_storage", qf_guard<t_same_storage>, 2},
                  {"item", qf_guard<t_item>, 1},
                  {"to_table", qf_guard<t_to_table>, 1},
                  {"sum", qf_guard<t_sum>, 3},
                  {"mean", qf_guard<t_mean>, 3},
                  {"min", qf_guard<t_min>, 3},
                  {"max", qf_guard<t_max>, 3},
                  {"norm", qf_guard<t_norm>, 4},
                  {"abs_max", qf_guard<t_abs_max>, 1},
                  {"diag", qf_guard<t_diag>, 1},
                  {"add", qf_guard<t_add>, 3},
                  {"sub", qf_guard<t_inplace<BinOp::Sub>>, 2},
                  {"mul", qf_guard<t_inplace<BinOp::Mul>>, 2},
                  {"div", qf_guard<t_inplace<BinOp::Div>>, 2},
                  {"matmul", qf_guard<t_matmul>, 2}},
                 t_gc /* cannot throw */, qf_guard<m_tostring>, "use t:get(i, j) / t:select(1, i)");
  // Operators: Lua calls them with a fixed number of operands.
  static const luaL_Reg meta[] = {
      {"__len", qf_guard<m_len>},
      {"__add", qf_guard<binop<BinOp::Add>>},
      {"__sub", qf_guard<binop<BinOp::Sub>>},
      {"__mul", qf_guard<binop<BinOp::Mul>>},
      {"__div", qf_guard<binop<BinOp::Div>>},
      {"__unm", qf_guard<m_unm>},
      {nullptr, nullptr}};
  luaL_getmetatable(L, kTensorMT);
  luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);

  set_funcs(L, mod,
            {{"tensor", qf_guard<f_tensor>, 2},
             {"zeros", qf_guard<f_zeros>, kVariadic},
             {"ones", qf_guard<f_ones>, kVariadic},
             {"full", qf_guard<f_full>, kVariadic},
             {"is_tensor", qf_guard<f_is_tensor>, 1},
             {"save_tensors", qf_guard<f_save_tensors>, 3},
             {"load_tensors", qf_guard<f_load_tensors>, 1}});
}

}  // namespace qf::lua
