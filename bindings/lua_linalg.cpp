// qforge — qf.linalg: Lua bindings of engine/core/linalg (docs/api/linalg.md), one Lua function
// per engine function. Results are always new contiguous f32 tensors; dimensions are 1-based.
#include "lua_util.h"
#include "core/linalg.h"
#include "core/rng.h"

namespace qf::lua {

// lua_rng.cpp's metatable name (its constant is file-local there).
static constexpr const char* kRngMT = "qforge.Rng";

// The optional {dim = d} of an options table at `opts`: 1-based in Lua → 0-based; -1 = last.
static int opt_dim(lua_State* L, int opts, const char* fn, const Tensor& X) {
  constexpr int64_t kAbsent = INT64_MIN;
  const int64_t d = opt_field_int(L, opts, "dim", fn, kAbsent);
  if (d == kAbsent) return -1;
  if (d < 1 || d > X.dim())
    fail(fn, ": dimension ", d, " out of range for X of shape ", shape_str(X.shape()),
         X.dim() ? " (valid: 1.." + std::to_string(X.dim()) + ")" : std::string());
  return (int)d - 1;
}

static int64_t check_size(lua_State* L, int arg, const char* fn) {
  const int64_t n = check_int(L, arg, fn);
  if (n < 1) arg_error(L, arg, fn, "n must be >= 1, got " + std::to_string(n));
  return n;
}

// qf.linalg.cholesky(A [, {upper = false}]) -> L (A = L·Lᵀ), or U = Lᵀ when upper.
static int l_cholesky(lua_State* L) {
  const Tensor& A = check_tensor(L, 1, "cholesky");
  check_opts(L, 2, "cholesky", {"upper"});
  push_tensor(L, cholesky(A, opt_field_bool(L, 2, "upper", "cholesky", false)));
  return 1;
}

// qf.linalg.solve_triangular(A, B [, {upper, left, transpose, unit}]) -> X
static int l_solve_triangular(lua_State* L) {
  const char* fn = "solve_triangular";
  const Tensor& A = check_tensor(L, 1, fn);
  const Tensor& B = check_tensor(L, 2, fn);
  check_opts(L, 3, fn, {"upper", "left", "transpose", "unit"});
  TriangularOpts o;
  o.upper = opt_field_bool(L, 3, "upper", fn, false);
  o.left = opt_field_bool(L, 3, "left", fn, true);
  o.transpose = opt_field_bool(L, 3, "transpose", fn, false);
  o.unit = opt_field_bool(L, 3, "unit", fn, false);
  push_tensor(L, solve_triangular(A, B, o));
  return 1;
}

// qf.linalg.solve(A, B) -> X with A·X = B
static int l_solve(lua_State* L) {
  const Tensor& A = check_tensor(L, 1, "solve");
  push_tensor(L, solve(A, check_tensor(L, 2, "solve")));
  return 1;
}

// qf.linalg.inv(A) -> A⁻¹
static int l_inv(lua_State* L) {
  push_tensor(L, inv(check_tensor(L, 1, "inv")));
  return 1;
}

// qf.linalg.eigh(A) -> values (ascending), vectors (columns)
static int l_eigh(lua_State* L) {
  EighResult r = eigh(check_tensor(L, 1, "eigh"));
  push_tensor(L, std::move(r.values));
  push_tensor(L, std::move(r.vectors));
  return 2;
}

// qf.linalg.svd(A [, {full = false}]) -> U, S (descending), V with A = U·diag(S)·Vᵀ
static int l_svd(lua_State* L) {
  const Tensor& A = check_tensor(L, 1, "svd");
  check_opts(L, 2, "svd", {"full"});
  SvdResult r = svd(A, opt_field_bool(L, 2, "full", "svd", false));
  push_tensor(L, std::move(r.U));
  push_tensor(L, std::move(r.S));
  push_tensor(L, std::move(r.V));
  return 3;
}

// qf.linalg.qr(A [, {mode = "reduced" | "complete"}]) -> Q, R with diag(R) >= 0
static int l_qr(lua_State* L) {
  const Tensor& A = check_tensor(L, 1, "qr");
  check_opts(L, 2, "qr", {"mode"});
  const std::string mode = opt_field_str(L, 2, "mode", "qr", "reduced");
  if (mode != "reduced" && mode != "complete")
    fail("qr: unknown mode '", mode, "' (expected \"reduced\" or \"complete\")");
  QrResult r = qr(A, mode == "complete");
  push_tensor(L, std::move(r.Q));
  push_tensor(L, std::move(r.R));
  return 2;
}

// qf.linalg.random_orthogonal(n, rng) -> a Haar-distributed n×n orthogonal matrix
static int l_random_orthogonal(lua_State* L) {
  const int64_t n = check_size(L, 1, "random_orthogonal");
  Rng& g = *static_cast<Rng*>(check_udata(L, 2, kRngMT, "random_orthogonal"));
  push_tensor(L, random_orthogonal(n, g));
  return 1;
}

// qf.linalg.hadamard(X [, {dim = last, normalize = true}])
static int l_hadamard(lua_State* L) {
  const Tensor& X = check_tensor(L, 1, "hadamard");
  check_opts(L, 2, "hadamard", {"dim", "normalize"});
  const int d = opt_dim(L, 2, "hadamard", X);
  push_tensor(L, hadamard(X, d, opt_field_bool(L, 2, "normalize", "hadamard", true)));
  return 1;
}

// qf.linalg.random_hadamard(X, seed [, {inverse = false, dim = last}])
static int l_random_hadamard(lua_State* L) {
  const Tensor& X = check_tensor(L, 1, "random_hadamard");
  const int64_t seed = check_int(L, 2, "random_hadamard");
  check_opts(L, 3, "random_hadamard", {"inverse", "dim"});
  const int d = opt_dim(L, 3, "random_hadamard", X);
  push_tensor(L, random_hadamard(X, (uint64_t)seed, opt_field_bool(L, 3, "inverse", "random_hadamard", false), d));
  return 1;
}

// qf.linalg.random_hadamard_matrix(n, seed) -> the dense T [n, n]
static int l_random_hadamard_matrix(lua_State* L) {
  const int64_t n = check_size(L, 1, "random_hadamard_matrix");
  const int64_t seed = check_int(L, 2, "random_hadamard_matrix");
  push_tensor(L, random_hadamard_matrix(n, (uint64_t)seed));
  return 1;
}

// qf.linalg.random_butterfly(X, seed [, {inverse = false, dim = last}])
static int l_random_butterfly(lua_State* L) {
  const Tensor& X = check_tensor(L, 1, "random_butterfly");
  const int64_t seed = check_int(L, 2, "random_butterfly");
  check_opts(L, 3, "random_butterfly", {"inverse", "dim"});
  const int d = opt_dim(L, 3, "random_butterfly", X);
  push_tensor(L, random_butterfly(X, (uint64_t)seed, opt_field_bool(L, 3, "inverse", "random_butterfly", false), d));
  return 1;
}

// qf.linalg.random_butterfly_matrix(n, seed) -> the dense T [n, n]
static int l_random_butterfly_matrix(lua_State* L) {
  const int64_t n = check_size(L, 1, "random_butterfly_matrix");
  const int64_t seed = check_int(L, 2, "random_butterfly_matrix");
  push_tensor(L, random_butterfly_matrix(n, (uint64_t)seed));
  return 1;
}

void open_linalg(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  lua_newtable(L);
  // Arities: the most arguments each uses (lua_util.h).
  set_funcs(L, -1,
            {{"cholesky", qf_guard<l_cholesky>, 2},
             {"solve_triangular", qf_guard<l_solve_triangular>, 3},
             {"solve", qf_guard<l_solve>, 2},
             {"inv", qf_guard<l_inv>, 1},
             {"eigh", qf_guard<l_eigh>, 1},
             {"svd", qf_guard<l_svd>, 2},
             {"qr", qf_guard<l_qr>, 2},
             {"random_orthogonal", qf_guard<l_random_orthogonal>, 2},
             {"hadamard", qf_guard<l_hadamard>, 2},
             {"random_hadamard", qf_guard<l_random_hadamard>, 3},
             {"random_hadamard_matrix", qf_guard<l_random_hadamard_matrix>, 2},
             {"random_butterfly", qf_guard<l_random_butterfly>, 3},
             {"random_butterfly_matrix", qf_guard<l_random_butterfly_matrix>, 2}});
  lua_setfield(L, mod, "linalg");
}

}  // namespace qf::lua
