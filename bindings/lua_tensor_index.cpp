// qforge — Lua bindings of engine/core/tensor_index: the remaining reductions (var, std, cumsum,
// cumprod, argmax, argmin), sorting and selection (sort, topk, kthvalue, median, quantile),
// constructors (qf.eye, qf.arange, qf.linspace, qf.randint, qf.randperm, qf.cat, qf.stack) and
// indexing (index_select, gather, scatter, scatter_add, masked_fill, index_fill, permute, flip,
// qf.invert_permutation). Reference: docs/api/tensor_index.md.
//
// Dimensions and indices are 1-based here (Torch7): index tensors coming in are read as 1-based and
// range-checked by the engine in those terms; index tensors going out are i32 holding 1-based
// indices, as t:max(dim) returns them.
#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor_index.h"
#include "core/tensor_ops.h"
#include "lua_util.h"

namespace qf::lua {

namespace {

constexpr const char* kRngMT = "qforge.Rng";  // lua_rng.cpp's class

// A 1-based dimension argument -> 0-based (lua_tensor.cpp's dim_arg, same message).
int dim_arg(lua_State* L, int arg, const char* fn, const Tensor& t) {
  const int64_t d = check_int(L, arg, fn);
  if (d < 1 || d > t.dim())
    fail(fn, ": dimension ", d, " out of range for a ", t.dim(), "-d tensor of shape ", shape_str(t.shape()),
         t.dim() ? " (valid: 1.." + std::to_string(t.dim()) + ")" : std::string());
  return (int)d - 1;
}

// An optional dimension argument: nil -> the last dimension.
int dim_or_last(lua_State* L, int arg, const char* fn, const Tensor& t) {
  if (!is_none_or_nil(L, arg)) return dim_arg(L, arg, fn, t);
  if (t.dim() == 0) fail(fn, ": a 0-d tensor has no dimension (shape [])");
  return t.dim() - 1;
}

bool opt_bool(lua_State* L, int arg, const char* fn, bool def) { return is_none_or_nil(L, arg) ? def : check_bool(L, arg, fn); }

// The optional (dim, keepdim) at arg, arg + 1 -> 0-based dim, or -1 when absent.
int reduce_dim_arg(lua_State* L, int arg, const char* fn, const Tensor& t, bool* keepdim) {
  *keepdim = false;
  if (is_none_or_nil(L, arg)) {
    if (!is_none_or_nil(L, arg + 1)) arg_error(L, arg + 1, fn, "keepdim given without a dimension");
    return -1;
  }
  const int d = dim_arg(L, arg, fn, t);
  *keepdim = opt_bool(L, arg + 1, fn, false);
  return d;
}

// 0-based i32 indices -> 1-based, in place.
Tensor one_based(Tensor idx) {
  int32_t* p = idx.data<int32_t>();
  for (int64_t k = 0; k < idx.numel(); ++k) ++p[k];
  return idx;
}

int push_pair(lua_State* L, ValuesIndices r) {
  push_tensor(L, std::move(r.values));
  push_tensor(L, one_based(std::move(r.indices)));
  return 2;
}

Rng& check_rng(lua_State* L, int arg, const char* fn) { return *static_cast<Rng*>(check_udata(L, arg, kRngMT, fn)); }

// ---- reductions ----
// t:var([dim [, keepdim [, unbiased = true]]]), t:std(...): a number without dim (t:var(nil, nil, false)
// for the biased one), an f32 tensor with one.
template <bool sq>
int t_var(lua_State* L) {
  const char* fn = sq ? "std" : "var";
  const Tensor& t = check_tensor(L, 1, fn);
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, fn, t, &kd);
  const bool unbiased = opt_bool(L, 4, fn, true);
  if (d < 0) {
    if (t.defined() && t.numel() == 0) fail(fn, ": empty tensor");
    const double v = var_all(t, unbiased);
    lua_pushnumber(L, sq ? std::sqrt(v) : v);
  } else {
    push_tensor(L, sq ? std_dim(t, d, kd, unbiased) : var_dim(t, d, kd, unbiased));
  }
  return 1;
}

template <bool prod>
int t_cumulative(lua_State* L) {
  const char* fn = prod ? "cumprod" : "cumsum";
  const Tensor& t = check_tensor(L, 1, fn);
  const int d = dim_arg(L, 2, fn, t);
  push_tensor(L, prod ? cumprod(t, d) : cumsum(t, d));
  return 1;
}

// t:argmax([dim [, keepdim]]): the 1-based i32 indices of max(dim); without dim the 1-based
// position in row-major order over all values (an integer). NaN wins, ties take the first.
template <bool is_max>
int t_argext(lua_State* L) {
  const char* fn = is_max ? "argmax" : "argmin";
  const Tensor& t = check_tensor(L, 1, fn);
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, fn, t, &kd);
  if (d >= 0) {
    ArgExtremum r = is_max ? max_dim(t, d, kd) : min_dim(t, d, kd);
    push_tensor(L, one_based(std::move(r.indices)));
    return 1;
  }
  if (!t.defined() || t.numel() == 0) fail(fn, ": empty tensor");
  const Tensor flat = t.contiguous().view({-1});
  ArgExtremum r = is_max ? max_dim(flat, 0) : min_dim(flat, 0);
  lua_pushinteger(L, (lua_Integer)r.indices.data<int32_t>()[0] + 1);
  return 1;
}

// ---- sorting and selection ----
int t_sort(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "sort");
  const int d = dim_or_last(L, 2, "sort", t);
  return push_pair(L, sort(t, d, opt_bool(L, 3, "sort", false)));
}

int t_topk(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "topk");
  const int64_t k = check_int(L, 2, "topk");
  const int d = dim_or_last(L, 3, "topk", t);
  return push_pair(L, topk(t, k, d, opt_bool(L, 4, "topk", true), opt_bool(L, 5, "topk", true)));
}

int t_kthvalue(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "kthvalue");
  const int64_t k = check_int(L, 2, "kthvalue");
  const int d = dim_or_last(L, 3, "kthvalue", t);
  return push_pair(L, kthvalue(t, k, d, opt_bool(L, 4, "kthvalue", false)));
}

int t_median(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "median");
  bool kd = false;
  const int d = reduce_dim_arg(L, 2, "median", t, &kd);
  if (d >= 0) return push_pair(L, median_dim(t, d, kd));
  lua_pushnumber(L, median_all(t));
  return 1;
}

// t:quantile(q [, dim [, keepdim]]): q a number or a 0-d/1-d tensor of probabilities.
int t_quantile(lua_State* L) {
  const char* fn = "quantile";
  const Tensor& t = check_tensor(L, 1, fn);
  std::vector<double> q;
  bool scalar_q = false;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    q.push_back(check_num(L, 2, fn));
    scalar_q = true;
  } else if (is_tensor(L, 2)) {
    const Tensor& qt = check_tensor(L, 2, fn);
    if (qt.dim() > 1) arg_error(L, 2, fn, "q must be a number or a 1-d tensor, got shape " + shape_str(qt.shape()));
    for (float v : qt.to_vector()) q.push_back(v);
    scalar_q = qt.dim() == 0;
  } else {
    type_error(L, 2, fn, "number or qforge.Tensor");
  }
  bool kd = false;
  const int d = reduce_dim_arg(L, 3, fn, t, &kd);
  if (d >= 0) {
    push_tensor(L, quantile_dim(t, q, d, kd, scalar_q));
    return 1;
  }
  const std::vector<double> r = quantile_all(t, q);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_pushnumber(L, r[0]);
  } else {
    Tensor out = Tensor::empty(check_tensor(L, 2, fn).shape());
    for (size_t j = 0; j < r.size(); ++j) out.f32()[j] = (float)r[j];
    push_tensor(L, std::move(out));
  }
  return 1;
}

// ---- indexing ----
int t_index_select(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "index_select");
  const int d = dim_arg(L, 2, "index_select", t);
  push_tensor(L, index_select(t, d, check_tensor(L, 3, "index_select"), 1));
  return 1;
}

int t_gather(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "gather");
  const int d = dim_arg(L, 2, "gather", t);
  push_tensor(L, gather(t, d, check_tensor(L, 3, "gather"), 1));
  return 1;
}

template <bool add>
int t_scatter(lua_State* L) {
  const char* fn = add ? "scatter_add" : "scatter";
  Tensor& t = check_tensor(L, 1, fn);
  const int d = dim_arg(L, 2, fn, t);
  const Tensor& idx = check_tensor(L, 3, fn);
  if (!add && lua_type(L, 4) == LUA_TNUMBER) {
    scatter_(t, d, idx, (float)lua_tonumber(L, 4), 1);
  } else {
    if (!is_tensor(L, 4)) type_error(L, 4, fn, add ? "qforge.Tensor" : "number or qforge.Tensor");
    const Tensor& src = check_tensor(L, 4, fn);
    if (add) scatter_add_(t, d, idx, src, 1);
    else scatter_(t, d, idx, src, 1);
  }
  lua_settop(L, 1);
  return 1;
}

int t_masked_fill(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "masked_fill");
  const Tensor& mask = check_tensor(L, 2, "masked_fill");
  masked_fill_(t, mask, (float)check_num(L, 3, "masked_fill"));
  lua_settop(L, 1);
  return 1;
}

int t_index_fill(lua_State* L) {
  Tensor& t = check_tensor(L, 1, "index_fill");
  const int d = dim_arg(L, 2, "index_fill", t);
  const Tensor& idx = check_tensor(L, 3, "index_fill");
  index_fill_(t, d, idx, (float)check_num(L, 4, "index_fill"), 1);
  lua_settop(L, 1);
  return 1;
}

// t:permute(d1, d2, ...) or t:permute{d1, d2, ...}: a view.
int perm_dim(int64_t v, const Tensor& t) {
  if (v < 1 || v > t.dim())
    fail("permute: dimension ", v, " out of range for a ", t.dim(), "-d tensor of shape ", shape_str(t.shape()),
         t.dim() ? " (valid: 1.." + std::to_string(t.dim()) + ")" : std::string());
  return (int)v - 1;
}
int t_permute(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "permute");
  std::vector<int> perm;
  const int top = lua_gettop(L);
  if (lua_type(L, 2) == LUA_TTABLE) {
    if (top > 2) too_many_args(L, 3, "permute");
    const lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, 2, i);
      int ok = 0;
      const lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
      lua_pop(L, 1);
      if (!ok) arg_error(L, 2, "permute", "entry " + std::to_string(i) + " is not an integer");
      perm.push_back(perm_dim(v, t));
    }
  } else {
    if (top >= 2 && lua_type(L, 2) != LUA_TNUMBER) type_error(L, 2, "permute", "integer or table of integers");
    for (int a = 2; a <= top; ++a) {
      perm.push_back(perm_dim(check_int(L, a, "permute"), t));
    }
  }
  push_tensor(L, permute(t, perm));
  return 1;
}

int t_flip(lua_State* L) {
  const Tensor& t = check_tensor(L, 1, "flip");
  push_tensor(L, flip(t, dim_arg(L, 2, "flip", t)));
  return 1;
}

// ---- module functions ----
int f_eye(lua_State* L) {
  const int64_t n = check_int(L, 1, "eye");
  const int64_t m = is_none_or_nil(L, 2) ? n : check_int(L, 2, "eye");
  push_tensor(L, eye(n, m));
  return 1;
}

// qf.arange(stop) / qf.arange(start, stop [, step]): integer arithmetic when all are integers.
int f_arange(lua_State* L) {
  const char* fn = "arange";
  if (is_none_or_nil(L, 1)) type_error(L, 1, fn, "number");
  const bool one = is_none_or_nil(L, 2);
  if (one && !is_none_or_nil(L, 3)) arg_error(L, 3, fn, "step given without stop");
  const int a0 = one ? 0 : 1, a1 = one ? 1 : 2;  // stack positions of start (0: none), stop
  for (int a = 1; a <= (one ? 1 : 3); ++a)
    if (!is_none_or_nil(L, a) && lua_type(L, a) != LUA_TNUMBER) type_error(L, a, fn, "number");
  const bool ints = (a0 == 0 || lua_isinteger(L, a0)) && lua_isinteger(L, a1) && (one || is_none_or_nil(L, 3) || lua_isinteger(L, 3));
  if (ints) {
    const int64_t start = a0 ? lua_tointeger(L, a0) : 0, stop = lua_tointeger(L, a1);
    const int64_t step = one || is_none_or_nil(L, 3) ? 1 : lua_tointeger(L, 3);
    push_tensor(L, arange_int(start, stop, step));
  } else {
    const double start = a0 ? lua_tonumber(L, a0) : 0.0, stop = lua_tonumber(L, a1);
    const double step = one || is_none_or_nil(L, 3) ? 1.0 : lua_tonumber(L, 3);
    push_tensor(L, arange(start, stop, step));
  }
  return 1;
}

int f_linspace(lua_State* L) {
  const double a = check_num(L, 1, "linspace"), b = check_num(L, 2, "linspace");
  push_tensor(L, linspace(a, b, check_int(L, 3, "linspace")));
  return 1;
}

// qf.randint(rng, lo, hi, shape...): lo and hi inclusive, as r:randint.
int f_randint(lua_State* L) {
  Rng& g = check_rng(L, 1, "randint");
  const int64_t lo = check_int(L, 2, "randint"), hi = check_int(L, 3, "randint");
  int next = 0;
  const Shape s = shape_arg(L, 4, "randint", &next);
  if (lua_gettop(L) >= next) too_many_args(L, next, "randint");
  push_tensor(L, randint(g, lo, hi, s));
  return 1;
}

int f_randperm(lua_State* L) {
  Rng& g = check_rng(L, 1, "randperm");
  push_tensor(L, one_based(randperm(g, check_int(L, 2, "randperm"))));
  return 1;
}

// The list of tensors at arg 1 (qf.cat / qf.stack).
std::vector<Tensor> tensor_list(lua_State* L, const char* fn) {
  check_table(L, 1, fn);
  std::vector<Tensor> ts;
  const lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  for (lua_Integer i = 1; i <= n; ++i) {
    lua_rawgeti(L, 1, i);
    const bool ok = is_tensor(L, -1);
    std::string got = ok ? std::string() : type_name(L, -1);
    if (ok) ts.push_back(*static_cast<Tensor*>(lua_touserdata(L, -1)));
    lua_pop(L, 1);
    if (!ok) arg_error(L, 1, fn, "element " + std::to_string(i) + " is a " + got + ", not a qforge.Tensor");
  }
  if (ts.empty()) arg_error(L, 1, fn, "empty list of tensors");
  return ts;
}

int f_cat(lua_State* L) {
  std::vector<Tensor> ts = tensor_list(L, "cat");
  const int64_t d = is_none_or_nil(L, 2) ? 1 : check_int(L, 2, "cat");
  if (d < 1 || d > ts[0].dim())
    fail("cat: dimension ", d, " out of range for ", ts[0].dim(), "-d tensors of shape ", shape_str(ts[0].shape()),
         ts[0].dim() ? " (valid: 1.." + std::to_string(ts[0].dim()) + ")" : std::string());
  push_tensor(L, cat(ts, (int)d - 1));
  return 1;
}

int f_stack(lua_State* L) {
  std::vector<Tensor> ts = tensor_list(L, "stack");
  const int64_t d = is_none_or_nil(L, 2) ? 1 : check_int(L, 2, "stack");
  if (d < 1 || d > ts[0].dim() + 1)
    fail("stack: dimension ", d, " out of range for stacking ", ts[0].dim(), "-d tensors (valid: 1..", ts[0].dim() + 1, ")");
  push_tensor(L, stack(ts, (int)d - 1));
  return 1;
}

int f_invert_permutation(lua_State* L) {
  push_tensor(L, invert_permutation(check_tensor(L, 1, "invert_permutation"), 1));
  return 1;
}

}  // namespace

void open_tensor_index(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities count self. permute takes its dimensions as integers too and checks the count itself.
  add_methods(L, kTensorMT,
              {{"var", qf_guard<t_var<false>>, 4},
               {"std", qf_guard<t_var<true>>, 4},
               {"cumsum", qf_guard<t_cumulative<false>>, 2},
               {"cumprod", qf_guard<t_cumulative<true>>, 2},
               {"argmax", qf_guard<t_argext<true>>, 3},
               {"argmin", qf_guard<t_argext<false>>, 3},
               {"sort", qf_guard<t_sort>, 3},
               {"topk", qf_guard<t_topk>, 5},
               {"kthvalue", qf_guard<t_kthvalue>, 4},
               {"median", qf_guard<t_median>, 3},
               {"quantile", qf_guard<t_quantile>, 4},
               {"index_select", qf_guard<t_index_select>, 3},
               {"gather", qf_guard<t_gather>, 3},
               {"scatter", qf_guard<t_scatter<false>>, 4},
               {"scatter_add", qf_guard<t_scatter<true>>, 4},
               {"masked_fill", qf_guard<t_masked_fill>, 3},
               {"index_fill", qf_guard<t_index_fill>, 4},
               {"permute", qf_guard<t_permute>, kVariadic},
               {"flip", qf_guard<t_flip>, 2}});
  set_funcs(L, mod,
            {{"eye", qf_guard<f_eye>, 2},
             {"arange", qf_guard<f_arange>, 3},
             {"linspace", qf_guard<f_linspace>, 3},
             {"randint", qf_guard<f_randint>, kVariadic},
             {"randperm", qf_guard<f_randperm>, 2},
             {"cat", qf_guard<f_cat>, 2},
             {"stack", qf_guard<f_stack>, 2},
             {"invert_permutation", qf_guard<f_invert_permutation>, 1}});
}

}  // namespace qf::lua
