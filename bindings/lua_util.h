// qforge — helpers shared by the Lua bindings: the exception trampoline, argument checks
// that throw, push helpers, the Tensor userdata accessors.
//
// Debian's Lua is compiled as C, so lua_error longjmps and skips C++ destructors. Rules:
//  * every C function registered with Lua is wrapped as qf_guard<F>: F runs inside
//    try/catch, and the Lua error is raised only after the catch block has ended, from a
//    frame that holds no C++ object with a destructor;
//  * inside F, never call luaL_check*/luaL_error/lua_error: use the helpers below, which
//    throw qf::Error with Lua-style messages ("bad argument #2 to 'narrow' (integer
//    expected, got string)");
//  * read tables with raw access (lua_rawget*, lua_next) so no metamethod can raise.
// Lua memory errors inside F can still longjmp; they leak, they do not corrupt.
#pragma once
#include <lua.hpp>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "model/model.h"
#include "core/tensor.h"
#include "eval/reference_logits.h"
#include "tokenizer/tokenizer.h"

// Builds the `qforge` module table (lua_module.cpp). Use with luaL_requiref.
int luaopen_qforge(lua_State* L);

namespace qf::lua {

// Thrown to end the recipe with an exit code without an error (qf.options under --help).
// qf_guard turns it into a Lua error and leaves the code in the registry (exit_request()).
struct ExitRequest {
  int code = 0;
};
// The code left by an ExitRequest in this state, or -1.
int exit_request(lua_State* L);

namespace detail {
void stash_message(const char* msg);  // copies into a fixed buffer: no allocation
[[noreturn]] void raise_stashed(lua_State* L, int exit_code);  // where + message, lua_error
}  // namespace detail

// The trampoline: no C++ exception ever unwinds through a Lua frame.
template <lua_CFunction F>
int qf_guard(lua_State* L) {
  int exit_code = -1;
  try {
    return F(L);
  } catch (const ExitRequest& e) {
    exit_code = e.code;
  } catch (const std::exception& e) {
    detail::stash_message(e.what());
  } catch (...) {
    detail::stash_message("unknown C++ exception");
  }
  detail::raise_stashed(L, exit_code);  // outside the catch blocks; nothing to destroy here
}

// ---- registration with a declared arity ----
// Every Lua-facing function is registered as an Fn: its name, its qf_guard'ed body and the most
// arguments it uses (self included for methods), or kVariadic for the few that take a variable
// count (shapes given as integers) and check the rest themselves. A call with more arguments
// fails before the body runs: "bad argument #3 to 'sum' (at most 2 arguments expected, got 3)".
// The arities are recorded in qf._arity[function] (tests enumerate every function with it).
constexpr int kVariadic = -1;
struct Fn {
  constexpr Fn(const char* n, lua_CFunction fn, int max) : name(n), f(fn), max_args(max) {}  // no default arity
  const char* name;
  lua_CFunction f;
  int max_args;
};
// t[name] = a checked closure for each entry (t: a stack index).
void set_funcs(lua_State* L, int t, std::initializer_list<Fn> fns);
// The error for a call with too many arguments (variadic functions: the first extra is at `first_extra`).
[[noreturn]] void too_many_args(lua_State* L, int first_extra, const char* fn);

// ---- argument checks (throw qf::Error) ----
// `arg` is a stack index; messages count arguments the way Lua does (self excluded in
// a method call t:f(...)). `fn` names the function.
const char* type_name(lua_State* L, int idx);  // "number", "string", "qforge.Tensor", ...
[[noreturn]] void arg_error(lua_State* L, int arg, const char* fn, const std::string& msg);
[[noreturn]] void type_error(lua_State* L, int arg, const char* fn, const char* expected);
int64_t check_int(lua_State* L, int arg, const char* fn);
double check_num(lua_State* L, int arg, const char* fn);
std::string check_str(lua_State* L, int arg, const char* fn);  // strings only (no number coercion)
bool check_bool(lua_State* L, int arg, const char* fn);
void check_table(lua_State* L, int arg, const char* fn);
bool is_none_or_nil(lua_State* L, int arg);
// Makes room for n more stack slots (recursive readers/writers of nested tables).
void need_stack(lua_State* L, int n);

// ---- options tables: f(x, {key = value, ...}) ----
// Checks that the argument is nil or a table whose keys are all in `known`; an unknown
// key is an error naming the key, the function and the known keys.
void check_opts(lua_State* L, int arg, const char* fn, std::initializer_list<const char*> known);
// Typed optional fields of the options table at `arg` (absent table or nil field -> def).
int64_t opt_field_int(lua_State* L, int arg, const char* key, const char* fn, int64_t def);
double opt_field_num(lua_State* L, int arg, const char* key, const char* fn, double def);
bool opt_field_bool(lua_State* L, int arg, const char* key, const char* fn, bool def);
std::string opt_field_str(lua_State* L, int arg, const char* key, const char* fn, const std::string& def);

// ---- shapes and pushes ----
// A shape given as a table {2, 3} at `arg`, or as integers f(2, 3) from `arg` on.
// *next (if given) receives the first stack index after the shape.
Shape shape_arg(lua_State* L, int arg, const char* fn, int* next = nullptr);
void push_shape(lua_State* L, const Shape& s);  // 1-indexed table of integers
void push_numbers(lua_State* L, const std::vector<double>& v);  // 1-indexed table of numbers
void push_str(lua_State* L, const std::string& s);
// t[k] = v for the table on top of the stack; v an integer, float, bool or string.
template <class T>
void set_field(lua_State* L, const char* k, const T& v) {
  if constexpr (std::is_same_v<T, bool>) lua_pushboolean(L, v);
  else if constexpr (std::is_integral_v<T>) lua_pushinteger(L, (lua_Integer)v);
  else if constexpr (std::is_floating_point_v<T>) lua_pushnumber(L, (lua_Number)v);
  else push_str(L, v);
  lua_setfield(L, -2, k);
}
std::vector<int32_t> ids_from_table(lua_State* L, int idx, const char* fn);  // list of token ids

// ---- userdata ----
template <class T>
T* new_udata(lua_State* L, const char* mt, T&& v) {
  void* p = lua_newuserdatauv(L, sizeof(T), 0);
  T* o = new (p) T(std::move(v));
  luaL_setmetatable(L, mt);
  return o;
}
// The userdata of metatable `mt` at `arg`, or a "bad argument" error naming `expected`.
void* check_udata(lua_State* L, int arg, const char* mt, const char* fn);
// __gc: destroys the C++ object and clears the metatable so a resurrected object is inert.
template <class T>
int udata_gc(lua_State* L) {
  T* p = static_cast<T*>(lua_touserdata(L, 1));
  if (p && lua_getmetatable(L, 1)) {
    lua_pop(L, 1);
    p->~T();
    lua_pushnil(L);
    lua_setmetatable(L, 1);
  }
  return 0;
}

// Creates metatable `mt` with optional __gc, __tostring and methods. Indexing an object with a
// name that is not a method, or with a non-string key, is an error naming the class
// ("no method 'frobnicate' on qforge.Tensor"); `index_hint` is appended to the non-string-key
// error. Method tables are listed in qf._classes[mt].
void register_class(lua_State* L, const char* mt, std::initializer_list<Fn> methods, lua_CFunction gc,
                    lua_CFunction tostr, const char* index_hint = nullptr);
// More methods for a class registered by register_class (the toolkit files extend qforge.Tensor).
void add_methods(lua_State* L, const char* mt, std::initializer_list<Fn> methods);
// The module's qf._arity and qf._classes tables (luaopen_qforge, after all registrations).
void set_introspection(lua_State* L, int mod);

// ---- tensors (lua_tensor.cpp) ----
constexpr const char* kTensorMT = "qforge.Tensor";
void push_tensor(lua_State* L, Tensor t);
bool is_tensor(lua_State* L, int idx);
Tensor& check_tensor(lua_State* L, int arg, const char* fn);
int64_t live_tensors();  // Tensor userdata alive (created minus collected): a debug counter

// ---- models (lua_model.cpp) ----
constexpr const char* kModelMT = "qforge.Model";
struct LModel {
  std::shared_ptr<Model> m;
  std::shared_ptr<Tokenizer> tok;  // null when none was found
};
LModel& check_model(lua_State* L, int arg, const char* fn);

// ---- reference logits (lua_reference.cpp): userdata "qforge.ReferenceLogits" ----
void push_reference(lua_State* L, ReferenceLogits r);
const ReferenceLogits* test_reference(lua_State* L, int idx);  // nullptr when idx holds none

// ---- grids (lua_grid.cpp): the qf.grid{...} spec argument, Grid and QLinear userdata ----
GridSpec grid_spec_arg(lua_State* L, int arg, const char* fn);
// The optional column-importance tensor (1-d, cols values) at arg: required exactly when the spec
// has importance (methods.md#grid-importance); empty when absent.
std::vector<float> importance_arg(lua_State* L, int arg, const char* fn, const GridSpec& spec, int64_t cols);
Grid& check_grid(lua_State* L, int arg, const char* fn);
QuantizedLinear& check_qlinear(lua_State* L, int arg, const char* fn);
void push_qlinear(lua_State* L, QuantizedLinear q);  // the userdata every solver returns
// A transform table {kind =, [n =,] perm | diag | seed | matrix} for a side of size n (lua_grid.cpp);
// `side` ("input"/"output") names it in errors. push_transform pushes nil for none.
LinearTransform transform_arg(lua_State* L, int idx, const char* fn, const char* side, int64_t n);
void push_transform(lua_State* L, const LinearTransform& t);

// ---- blocks (lua_block.cpp) ----
void push_block(lua_State* L, std::shared_ptr<Model> m, int index);  // m:block(b); index 0-based
// Finetunes block `layer` of m on inputs x against targets y (B windows of T tokens) with the
// options table at `opts` (already checked by check_opts; nil: defaults); pushes the result table.
void push_block_finetune(lua_State* L, int opts, const char* fn, Model& m, int layer, const Tensor& x, const Tensor& y, int B,
                         int T);

// Module registration: each creates its own types' metatables and adds its functions to the module
// table at `mod`. No file adds methods to another's type, so they may run in any order.
void open_tensor(lua_State* L, int mod);
void open_model(lua_State* L, int mod);
void open_rng(lua_State* L, int mod);
void open_grid(lua_State* L, int mod);
void open_calibration(lua_State* L, int mod);
void open_block(lua_State* L, int mod);
void open_solvers(lua_State* L, int mod);
void open_cvxq(lua_State* L, int mod);
void open_reference(lua_State* L, int mod);
void open_multiple_choice(lua_State* L, int mod);
void open_tensor_math(lua_State* L, int mod);     // elementwise math, broadcasting (lua_tensor_math.cpp)
void open_tensor_index(lua_State* L, int mod);    // sort/topk/quantile, constructors, indexing (lua_tensor_index.cpp)
void open_linalg(lua_State* L, int mod);          // qf.linalg: factorizations, Hadamard (lua_linalg.cpp)  // qf.read_multiple_choice (lua_multiple_choice.cpp)
// m:multiple_choice, a qforge.Model method made in lua_multiple_choice.cpp, registered by open_model.
int model_multiple_choice(lua_State* L);

}  // namespace qf::lua
