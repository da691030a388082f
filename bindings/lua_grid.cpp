// qforge — grids in Lua: qf.grid{...} (a spec), qf.fit_grid(W, spec) (fitted parameters), and the
// userdata they lead to: qforge.GridSpec (the spec table's metatable), qforge.Grid (fitted scale,
// zero and groups), qforge.QLinear (codes + grid + outliers, what every solver returns).
#include <cmath>

#include "lua_util.h"
#include "solvers/solver.h"
#include "quant/grid.h"

namespace qf::lua {

static constexpr const char* kGridMT = "qforge.Grid";
static constexpr const char* kQLinMT = "qforge.QLinear";
static constexpr const char* kSpecMT = "qforge.GridSpec";

// ---- grid specs: plain tables {bits=, sym=, group=, mse=, ...} ------------------------
// Integer values of a tensor or a Lua array field (for allocations), checked against [lo, hi].
static std::vector<int64_t> int_list_field(lua_State* L, int arg, const char* key, const char* fn, int64_t lo, int64_t hi) {
  std::vector<int64_t> out;
  lua_getfield(L, arg, key);
  const int top = lua_gettop(L);
  std::vector<double> vals;
  if (is_tensor(L, top)) {
    const Tensor& t = check_tensor(L, top, fn);
    vals.assign(t.numel(), 0.0);
    const std::vector<float> v = t.contiguous().to_vector();
    for (size_t k = 0; k < v.size(); ++k) vals[k] = v[k];
  } else if (lua_type(L, top) == LUA_TTABLE) {
    const lua_Integer n = luaL_len(L, top);
    for (lua_Integer k = 1; k <= n; ++k) {
      lua_rawgeti(L, top, k);
      if (!lua_isnumber(L, -1)) fail(fn, ": option '", key, "' entry ", k, " is not a number");
      vals.push_back(lua_tonumber(L, -1));
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, top)) {
    fail(fn, ": option '", key, "' must be a tensor or an array of integers, got ", luaL_typename(L, top));
  }
  lua_pop(L, 1);
  for (size_t k = 0; k < vals.size(); ++k) {
    const double v = vals[k];
    if (v != std::floor(v) || v < (double)lo || v > (double)hi)
      fail(fn, ": option '", key, "' entry ", k + 1, " is ", v, ", expected an integer in ", lo, "..", hi);
    out.push_back((int64_t)v);
  }
  return out;
}

static GridSpec spec_arg(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TTABLE) type_error(L, arg, fn, "grid table (qf.grid{...})");
  check_opts(L, arg, fn, {"bits", "sym", "mapping", "importance", "group", "mse", "maxshrink", "grid_points", "norm", "kind", "compand_mult",
                          "compand_bias", "compand_search", "alloc", "row_groups", "f16_scales", "float_zero", "ktype"});
  GridSpec s;
  // ktype: a K-quant layout fixes bits, group, sym and fp16 scales; only importance may go with it.
  const std::string ktype = opt_field_str(L, arg, "ktype", fn, "");
  if (!ktype.empty()) {
    KQuantType t;
    if (!kquant_from_name(ktype, &t)) fail(fn, ": option 'ktype' must be Q2_K, Q3_K, Q4_K, Q5_K or Q6_K, got \"", ktype, "\"");
    for (const char* k : {"bits", "sym", "mapping", "group", "mse", "maxshrink", "grid_points", "norm", "compand_mult", "compand_bias",
                          "compand_search", "alloc", "row_groups", "f16_scales", "float_zero"}) {
      lua_getfield(L, arg, k);
      const bool given = !lua_isnil(L, -1);
      lua_pop(L, 1);
      if (given) fail(fn, ": option '", k, "' does not go with ktype=", ktype, " (the K-quant layout fixes the grid; importance may be given)");
    }
    const std::string kind = opt_field_str(L, arg, "kind", fn, "kquant");
    if (kind != "kquant") fail(fn, ": option 'kind' must be \"kquant\" with ktype, got \"", kind, "\"");
    const std::string importance = opt_field_str(L, arg, "importance", fn, "none");
    GridImportance imp;
    if (!grid_importance_from_name(importance, &imp) || imp == GridImportance::DiagX)
      fail(fn, ": option 'importance' must be \"none\" or \"diag\" with ktype, got \"", importance, "\"");
    return grid_spec_kquant(t, imp);
  }
  s.bits = (int)opt_field_int(L, arg, "bits", fn, s.bits);
  s.sym = opt_field_bool(L, arg, "sym", fn, s.sym);
  s.group = opt_field_int(L, arg, "group", fn, s.group);
  const std::string mapping = opt_field_str(L, arg, "mapping", fn, "gptq");
  if (!grid_mapping_from_name(mapping, &s.mapping)) fail(fn, ": option 'mapping' must be \"gptq\" or \"llamacpp\", got \"", mapping, "\"");
  const std::string importance = opt_field_str(L, arg, "importance", fn, "none");
  if (!grid_importance_from_name(importance, &s.importance))
    fail(fn, ": option 'importance' must be \"none\", \"diag\" or \"diag_x\", got \"", importance, "\"");
  s.mse = opt_field_bool(L, arg, "mse", fn, s.mse);
  s.maxshrink = (float)opt_field_num(L, arg, "maxshrink", fn, s.maxshrink);
  s.grid_points = (int)opt_field_int(L, arg, "grid_points", fn, s.grid_points);
  s.norm = (float)opt_field_num(L, arg, "norm", fn, s.norm);
  const std::string kind = opt_field_str(L, arg, "kind", fn, "uniform");
  if (kind == "compand") s.kind = GridKind::Compand;
  else if (kind == "kquant") fail(fn, ": kind \"kquant\" needs option 'ktype' (Q2_K, Q3_K, Q4_K, Q5_K or Q6_K)");
  else if (kind != "uniform") fail(fn, ": option 'kind' must be \"uniform\", \"compand\" or \"kquant\", got \"", kind, "\"");
  s.compand_mult = (float)opt_field_num(L, arg, "compand_mult", fn, s.compand_mult);
  s.compand_bias = (float)opt_field_num(L, arg, "compand_bias", fn, s.compand_bias);
  s.compand_search = opt_field_bool(L, arg, "compand_search", fn, s.compand_search);
  s.f16_scales = opt_field_bool(L, arg, "f16_scales", fn, s.f16_scales);
  s.float_zero = opt_field_bool(L, arg, "float_zero", fn, s.float_zero);
  // Allocation: alloc = bits per (row group, column group) [nrowgroups, ngroups]; row_groups =
  // 1-based row group of every row (absent: each row its own).
  for (int64_t b : int_list_field(L, arg, "alloc", fn, 0, 8)) s.group_bits.push_back((uint8_t)b);
  for (int64_t k : int_list_field(L, arg, "row_groups", fn, 1, 1 << 30)) {
    s.row_group.push_back((int32_t)(k - 1));
    s.nrowgroups = std::max<int64_t>(s.nrowgroups, k);
  }
  lua_getfield(L, arg, "alloc");
  if (is_tensor(L, -1) && !s.row_group.empty()) {  // the allocation's rows are the row groups
    const Tensor& a = check_tensor(L, -1, fn);
    if (a.dim() == 2) s.nrowgroups = std::max<int64_t>(s.nrowgroups, a.size(0));
  }
  lua_pop(L, 1);
  try {
    s.validate();
  } catch (const Error& e) {
    // validate's messages start with "grid: "; qf.grid{} keeps them as they are (no "grid: grid:").
    const std::string msg = e.what(), pre = std::string(fn) + ": ";
    if (msg.rfind(pre, 0) == 0) throw;
    fail(fn, ": ", msg);
  }
  return s;
}

static void push_spec(lua_State* L, const GridSpec& s) {
  if (s.kind == GridKind::KQuant) {
    lua_createtable(L, 0, 3);
    set_field(L, "ktype", std::string(kquant_layout(s.ktype).name));
    set_field(L, "kind", std::string("kquant"));
    if (s.importance != GridImportance::None) set_field(L, "importance", std::string(grid_importance_name(s.importance)));
    luaL_setmetatable(L, kSpecMT);
    return;
  }
  lua_createtable(L, 0, 7);
  set_field(L, "bits", s.bits);
  set_field(L, "sym", s.sym);
  set_field(L, "group", s.group);
  if (s.mapping != GridMapping::Gptq) set_field(L, "mapping", std::string(grid_mapping_name(s.mapping)));
  if (s.importance != GridImportance::None) set_field(L, "importance", std::string(grid_importance_name(s.importance)));
  set_field(L, "mse", s.mse);
  if (s.mse) {
    set_field(L, "maxshrink", (double)s.maxshrink);
    set_field(L, "grid_points", s.grid_points);
    set_field(L, "norm", (double)s.norm);
  }
  if (s.f16_scales) set_field(L, "f16_scales", true);
  if (s.float_zero) set_field(L, "float_zero", true);
  if (s.kind == GridKind::Compand) {
    set_field(L, "kind", std::string("compand"));
    set_field(L, "compand_mult", (double)s.compand_mult);
    set_field(L, "compand_bias", (double)s.compand_bias);
    set_field(L, "compand_search", s.compand_search);
  }
  if (!s.group_bits.empty()) {
    std::vector<float> v(s.group_bits.begin(), s.group_bits.end());
    push_tensor(L, Tensor::from_data({(int64_t)v.size()}, v));
    lua_setfield(L, -2, "alloc");
  }
  if (!s.row_group.empty()) {
    lua_createtable(L, (int)s.row_group.size(), 0);
    for (size_t k = 0; k < s.row_group.size(); ++k) {
      lua_pushinteger(L, s.row_group[k] + 1);
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "row_groups");
  }
  luaL_setmetatable(L, kSpecMT);
}

static int f_grid(lua_State* L) {
  push_spec(L, spec_arg(L, 1, "grid"));
  return 1;
}

static int spec_tostring(lua_State* L) {
  push_str(L, "qforge.grid " + spec_arg(L, 1, "__tostring").str());
  return 1;
}

// ---- Grid and QLinear userdata ------------------------------------------------------------
Grid& check_grid(lua_State* L, int arg, const char* fn) { return *static_cast<Grid*>(check_udata(L, arg, kGridMT, fn)); }
QuantizedLinear& check_qlinear(lua_State* L, int arg, const char* fn) {
  return *static_cast<QuantizedLinear*>(check_udata(L, arg, kQLinMT, fn));
}
static void push_grid(lua_State* L, Grid g) { new_udata<Grid>(L, kGridMT, std::move(g)); }
void push_qlinear(lua_State* L, QuantizedLinear q) { new_udata<QuantizedLinear>(L, kQLinMT, std::move(q)); }

static Tensor params_tensor(const Grid& g, const std::vector<float>& v) {
  return Tensor::from_data({g.nrowgroups(), g.ngroups}, v);
}

static int g_scales(lua_State* L) {
  const Grid& g = check_grid(L, 1, "scales");
  push_tensor(L, params_tensor(g, g.scale));
  return 1;
}
static int g_zeros(lua_State* L) {
  const Grid& g = check_grid(L, 1, "zeros");
  push_tensor(L, params_tensor(g, g.zero));
  return 1;
}
static int g_g_idx(lua_State* L) {  // 1-based group of every column
  const Grid& g = check_grid(L, 1, "g_idx");
  lua_createtable(L, (int)g.cols, 0);
  for (int64_t c = 0; c < g.cols; ++c) {
    lua_pushinteger(L, g.g_idx[c] + 1);
    lua_rawseti(L, -2, c + 1);
  }
  return 1;
}
static int g_spec(lua_State* L) {
  push_spec(L, check_grid(L, 1, "spec").spec);
  return 1;
}
// grid:quantize(W [, outliers]) -> QLinear: rounds every weight of W onto this grid; the nonzero
// entries of the dense tensor `outliers` (same shape) become the QLinear's sparse outliers, so
// q:dequantize() = grid values + outliers (a solver that keeps Ŵ = on-grid part + sparse part).
// The nonzero entries of a dense f32 tensor `outliers` at `arg` (the grid's shape) as sparse outliers.
static SparseEntries dense_outliers(lua_State* L, int arg, const char* fn, const Grid& g) {
  SparseEntries o;
  const Tensor& H = check_tensor(L, arg, fn);
  if (H.dtype() != DType::F32) fail(fn, ": outliers tensor has dtype ", dtype_name(H.dtype()), ", expected f32");
  if (H.dim() != 2 || H.size(0) != g.rows || H.size(1) != g.cols)
    fail(fn, ": outliers ", shape_str(H.shape()), " do not match the grid's [", g.rows, ", ", g.cols, "]");
  const Tensor Hc = H.contiguous();
  const float* h = Hc.f32();
  for (int64_t r = 0; r < g.rows; ++r)
    for (int64_t c = 0; c < g.cols; ++c) {
      const float v = h[r * g.cols + c];
      if (!std::isfinite(v)) fail(fn, ": outlier at row ", r + 1, ", column ", c + 1, " is not finite (", v, ")");
      if (v != 0.f) {
        o.row.push_back((int32_t)r);
        o.col.push_back((int32_t)c);
        o.val.push_back(v);
      }
    }
  return o;
}

static int g_quantize(lua_State* L) {
  const Grid& g = check_grid(L, 1, "quantize");
  QuantizedLinear q = quantize_to_grid(check_tensor(L, 2, "quantize"), g);
  if (!is_none_or_nil(L, 3)) q.outliers = dense_outliers(L, 3, "quantize", g);
  push_qlinear(L, std::move(q));
  return 1;
}

// qf.grid_from{spec=, scales=, zeros=, cols= [, g_idx=]}: a Grid from given parameters.
static int f_grid_from(lua_State* L) {
  const char* fn = "grid_from";
  check_opts(L, 1, fn, {"spec", "scales", "zeros", "cols", "g_idx"});
  if (lua_type(L, 1) != LUA_TTABLE) type_error(L, 1, fn, "table");
  auto field = [&](const char* k) {
    if (lua_getfield(L, 1, k) == LUA_TNIL) fail(fn, ": '", k, "' is required");
    return lua_gettop(L);
  };
  const GridSpec spec = spec_arg(L, field("spec"), fn);
  const int64_t cols = check_int(L, field("cols"), fn);
  const Tensor S = check_tensor(L, field("scales"), fn), Z = check_tensor(L, field("zeros"), fn);
  const int64_t rows = spec.row_group.empty() ? (S.dim() == 2 ? S.size(0) : 0) : (int64_t)spec.row_group.size();
  const int64_t G = spec.group > 0 ? spec.group : cols, ngroups = cols > 0 ? (cols + G - 1) / G : 0;
  const int64_t nrg = spec.row_group.empty() ? rows : spec.nrowgroups;
  for (const Tensor* t : {&S, &Z})
    if (t->dim() != 2 || t->size(0) != nrg || t->size(1) != ngroups)
      fail(fn, ": ", t == &S ? "scales" : "zeros", " are ", shape_str(t->shape()), "; this spec on ", cols,
           " columns needs [row groups, groups] = [", nrg, ", ", ngroups, "]");
  std::vector<int32_t> gidx;
  if (lua_getfield(L, 1, "g_idx") != LUA_TNIL) {
    const Tensor gi = check_tensor(L, lua_gettop(L), fn);
    for (float x : gi.to_vector()) {
      if (x != std::nearbyint(x)) fail(fn, ": g_idx holds ", x, ", not an integer group number");
      gidx.push_back((int32_t)x - 1);
    }
  }
  push_grid(L, grid_from_params(spec, rows, cols, S.to_vector(), Z.to_vector(), std::move(gidx)));
  return 1;
}

// A transform table at stack index `idx` for a side of size n: {kind = "perm", perm = T (1-based)},
// {kind = "diag", diag = T}, {kind = "hadamard" | "butterfly", seed = N [, diag = T]} (the seeded
// orthogonal transform after the diagonal: T = R·diag(d)), {kind = "dense", matrix = T}; each may
// also give n, the side's size (checked).
LinearTransform transform_arg(lua_State* L, int idx, const char* fn, const char* side, int64_t n) {
  idx = lua_absindex(L, idx);
  const std::string what = std::string(fn) + ": " + side + " transform";
  if (lua_type(L, idx) != LUA_TTABLE) fail(what, " must be a table {kind = ..., ...}, got ", type_name(L, idx));
  check_opts(L, idx, fn, {"kind", "n", "perm", "diag", "seed", "matrix"});
  LinearTransform t;
  t.n = n;
  if (lua_getfield(L, idx, "n") != LUA_TNIL) {  // q:transforms() gives n: it must be this side's size
    const int64_t given = check_int(L, lua_gettop(L), fn);
    if (given != n) fail(what, ": n = ", given, " but this side has ", n);
  }
  lua_pop(L, 1);
  const std::string kind = opt_field_str(L, idx, "kind", fn, "");
  if (!transform_kind_from_name(kind, &t.kind) || t.kind == TransformKind::None)
    fail(what, ": kind must be \"perm\", \"diag\", \"hadamard\", \"butterfly\" or \"dense\", got \"", kind, "\"");
  // The field each kind needs (indexed by TransformKind); a seeded kind may also take `diag`.
  static const char* const kNeeds[] = {"", "perm", "diag", "seed", "matrix", "seed"};
  for (const char* k : {"perm", "diag", "seed", "matrix"}) {
    const bool given = lua_getfield(L, idx, k) != LUA_TNIL;
    lua_pop(L, 1);
    const bool needed = std::string(k) == kNeeds[(int)t.kind];
    const bool optional = t.seeded() && std::string(k) == "diag";
    if (given != needed && !optional)
      fail(what, needed ? ": kind \"" + kind + "\" needs '" + k + "'" : ": '" + std::string(k) + "' does not belong to kind \"" + kind + "\"");
  }
  auto tensor_field = [&](const char* k) {
    lua_getfield(L, idx, k);
    Tensor x = check_tensor(L, lua_gettop(L), fn);
    lua_pop(L, 1);
    return x;
  };
  switch (t.kind) {
    case TransformKind::Permutation:
      for (float x : tensor_field("perm").to_vector()) {
        if (x != std::nearbyint(x)) fail(what, ": permutation entry ", x, " is not an integer");
        t.perm.push_back((int32_t)x - 1);
      }
      break;
    case TransformKind::Diagonal: t.diag = tensor_field("diag").to_vector(); break;
    case TransformKind::Hadamard:
    case TransformKind::Butterfly: {
      lua_getfield(L, idx, "seed");
      const int64_t seed = check_int(L, lua_gettop(L), fn);
      lua_pop(L, 1);
      if (seed < 0) fail(what, ": seed must be >= 0, got ", seed);
      t.seed = (uint64_t)seed;
      const bool has_diag = lua_getfield(L, idx, "diag") != LUA_TNIL;
      lua_pop(L, 1);
      if (has_diag) {
        const Tensor d = tensor_field("diag");
        if (d.dim() != 1) fail(what, ": 'diag' must be a 1-d tensor, got ", shape_str(d.shape()));
        t.diag = d.to_vector();
      }
      break;
    }
    case TransformKind::Dense: t.dense = tensor_field("matrix").contiguous().to(DType::F32); break;
    default: break;
  }
  t.validate(what);
  return t;
}

void push_transform(lua_State* L, const LinearTransform& t) {
  if (t.none()) {
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 0, 3);
  set_field(L, "kind", std::string(transform_kind_name(t.kind)));
  set_field(L, "n", t.n);
  switch (t.kind) {
    case TransformKind::Permutation: {
      Tensor p = Tensor::empty({t.n}, DType::I32);
      for (int64_t i = 0; i < t.n; ++i) p.data<int32_t>()[i] = t.perm[(size_t)i] + 1;
      push_tensor(L, p);
      lua_setfield(L, -2, "perm");
      break;
    }
    case TransformKind::Diagonal: push_tensor(L, Tensor::from_data({t.n}, t.diag)); lua_setfield(L, -2, "diag"); break;
    case TransformKind::Hadamard:
    case TransformKind::Butterfly:
      set_field(L, "seed", (int64_t)t.seed);
      if (!t.diag.empty()) {
        push_tensor(L, Tensor::from_data({t.n}, t.diag));
        lua_setfield(L, -2, "diag");
      }
      break;
    case TransformKind::Dense: push_tensor(L, t.dense.clone()); lua_setfield(L, -2, "matrix"); break;
    default: break;
  }
}

// q:transforms() -> input, output: each nil or the table qf.qlinear took (copies).
static int q_transforms(lua_State* L) {
  const QuantizedLinear& q = check_qlinear(L, 1, "transforms");
  push_transform(L, q.input);
  push_transform(L, q.output);
  return 2;
}
// q:with_transforms(input [, output]) -> a copy of q with the transforms put on (each a transform
// table or nil; a side q already transforms cannot take a second one). What P.quantize_model does
// with a preprocessing step's transforms (docs/methods.md#preprocess).
static int q_with_transforms(lua_State* L) {
  const char* fn = "with_transforms";
  const QuantizedLinear& q = check_qlinear(L, 1, fn);
  LinearTransform in, out;
  if (!is_none_or_nil(L, 2)) in = transform_arg(L, 2, fn, "input", q.grid.cols);
  if (!is_none_or_nil(L, 3)) out = transform_arg(L, 3, fn, "output", q.grid.rows);
  if (in.none() && out.none()) fail(fn, ": give an input or an output transform (both are nil)");
  push_qlinear(L, attach_transforms(q, in, out, fn));
  return 1;
}

static int q_dequantize_basis(lua_State* L) {
  push_tensor(L, check_qlinear(L, 1, "dequantize_basis").dequantize_basis());
  return 1;
}

// qf.qlinear{grid=, codes= [, outliers=, input=, output=]}: a QLinear from a grid, integer codes,
// dense outliers and transforms.
static int f_qlinear(lua_State* L) {
  const char* fn = "qlinear";
  check_opts(L, 1, fn, {"grid", "codes", "outliers", "input", "output"});
  if (lua_type(L, 1) != LUA_TTABLE) type_error(L, 1, fn, "table");
  if (lua_getfield(L, 1, "grid") == LUA_TNIL) fail(fn, ": 'grid' is required (a qforge.Grid)");
  const Grid& g = check_grid(L, lua_gettop(L), fn);
  if (lua_getfield(L, 1, "codes") == LUA_TNIL) fail(fn, ": 'codes' is required (a [rows, cols] tensor of integers)");
  const Tensor codes = check_tensor(L, lua_gettop(L), fn);
  SparseEntries o;
  if (lua_getfield(L, 1, "outliers") != LUA_TNIL) o = dense_outliers(L, lua_gettop(L), fn, g);
  QuantizedLinear q = qlinear_from_codes(g, codes, std::move(o));
  if (lua_getfield(L, 1, "input") != LUA_TNIL) q.input = transform_arg(L, lua_gettop(L), fn, "input", g.cols);
  if (lua_getfield(L, 1, "output") != LUA_TNIL) q.output = transform_arg(L, lua_gettop(L), fn, "output", g.rows);
  push_qlinear(L, std::move(q));
  return 1;
}

static int g_tostring(lua_State* L) {
  const Grid& g = check_grid(L, 1, "__tostring");
  push_str(L, "qforge.Grid " + g.spec.str() + " [" + std::to_string(g.rows) + ", " + std::to_string(g.cols) + "], " +
                  std::to_string(g.ngroups) + " group(s) per row");
  return 1;
}

static int q_dequantize(lua_State* L) {
  push_tensor(L, check_qlinear(L, 1, "dequantize").dequantize());
  return 1;
}
static int q_codes(lua_State* L) {  // a copy: a QLinear's codes change only through qf.qlinear
  push_tensor(L, check_qlinear(L, 1, "codes").codes.clone());
  return 1;
}
static int q_grid(lua_State* L) {
  push_grid(L, check_qlinear(L, 1, "grid").grid);
  return 1;
}
static int q_nnz(lua_State* L) {  // number of full-precision outliers
  lua_pushinteger(L, check_qlinear(L, 1, "nnz").outliers.nnz());
  return 1;
}
static int q_outliers(lua_State* L) {  // {{row, col, value}, ...}, 1-based
  const SparseEntries& o = check_qlinear(L, 1, "outliers").outliers;
  lua_createtable(L, (int)o.nnz(), 0);
  for (int64_t k = 0; k < o.nnz(); ++k) {
    lua_createtable(L, 3, 0);
    lua_pushinteger(L, o.row[k] + 1);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, o.col[k] + 1);
    lua_rawseti(L, -2, 2);
    lua_pushnumber(L, o.val[k]);
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, -2, k + 1);
  }
  return 1;
}
static int q_tostring(lua_State* L) {
  const QuantizedLinear& q = check_qlinear(L, 1, "__tostring");
  push_str(L, "qforge.QLinear " + q.grid.spec.str() + " [" + std::to_string(q.grid.rows) + ", " + std::to_string(q.grid.cols) +
                  "]" + (q.outliers.nnz() ? ", " + std::to_string(q.outliers.nnz()) + " outliers" : std::string()) +
                  (q.input.none() ? "" : std::string(", input ") + transform_kind_name(q.input.kind)) +
                  (q.output.none() ? "" : std::string(", output ") + transform_kind_name(q.output.kind)));
  return 1;
}

std::vector<float> importance_arg(lua_State* L, int arg, const char* fn, const GridSpec& spec, int64_t cols) {
  if (lua_isnoneornil(L, arg)) {
    if (spec.importance != GridImportance::None)
      fail(fn, ": the grid's importance '", grid_importance_name(spec.importance), "' needs the column importances (argument ", arg,
           ": a tensor of ", cols, " values, e.g. S:diag() of the layer's Σ)");
    return {};
  }
  if (spec.importance == GridImportance::None)
    fail(fn, ": argument ", arg, " (column importances) given, but the grid has importance \"none\" (qf.grid{..., importance = \"diag\"})");
  const Tensor t = check_tensor(L, arg, fn).contiguous();
  if (t.dim() != 1 || t.size(0) != cols)
    fail(fn, ": argument ", arg, " (column importances) must be a 1-d tensor of ", cols, " values, got ", shape_str(t.shape()));
  return t.to_vector();
}

static int f_fit_grid(lua_State* L) {
  const Tensor& W = check_tensor(L, 1, "fit_grid");
  const GridSpec spec = spec_arg(L, 2, "fit_grid");
  const std::vector<float> imp = importance_arg(L, 3, "fit_grid", spec, W.dim() == 2 ? W.size(1) : 0);
  push_grid(L, grid_fit(W, spec, imp.empty() ? nullptr : imp.data()));
  return 1;
}

void open_grid(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities (the most arguments used, self included): lua_util.h.
  register_class(L, kSpecMT, {}, nullptr, qf_guard<spec_tostring>);
  register_class(L, kGridMT,
                 {{"scales", qf_guard<g_scales>, 1}, {"zeros", qf_guard<g_zeros>, 1}, {"g_idx", qf_guard<g_g_idx>, 1},
                  {"spec", qf_guard<g_spec>, 1}, {"quantize", qf_guard<g_quantize>, 3}},
                 udata_gc<Grid>, qf_guard<g_tostring>);
  register_class(L, kQLinMT,
                 {{"dequantize", qf_guard<q_dequantize>, 1}, {"codes", qf_guard<q_codes>, 1}, {"grid", qf_guard<q_grid>, 1},
                  {"nnz", qf_guard<q_nnz>, 1}, {"outliers", qf_guard<q_outliers>, 1},
                  {"transforms", qf_guard<q_transforms>, 1}, {"dequantize_basis", qf_guard<q_dequantize_basis>, 1},
                  {"with_transforms", qf_guard<q_with_transforms>, 3}},
                 udata_gc<QuantizedLinear>, qf_guard<q_tostring>);
  set_funcs(L, mod, {{"grid", qf_guard<f_grid>, 1}, {"fit_grid", qf_guard<f_fit_grid>, 3}, {"grid_from", qf_guard<f_grid_from>, 1},
                     {"qlinear", qf_guard<f_qlinear>, 1}});
}

// Exported through lua_util.h (with check_grid, check_qlinear, push_qlinear) for other binding files.
GridSpec grid_spec_arg(lua_State* L, int arg, const char* fn) { return spec_arg(L, arg, fn); }

}  // namespace qf::lua
