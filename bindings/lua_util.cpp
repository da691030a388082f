#include "lua_util.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace qf::lua {

// ---- the trampoline's error path ----------------------------------------------------
static thread_local char g_msg[8192];
static const char* kExitKey = "qforge.exit_code";

void detail::stash_message(const char* msg) {
  std::strncpy(g_msg, msg ? msg : "(null)", sizeof g_msg - 1);
  g_msg[sizeof g_msg - 1] = 0;
}

void detail::raise_stashed(lua_State* L, int exit_code) {
  if (exit_code >= 0) {
    lua_pushinteger(L, exit_code);
    lua_setfield(L, LUA_REGISTRYINDEX, kExitKey);
    lua_pushliteral(L, "qforge: exit requested");
  } else {
    luaL_where(L, 1);  // "recipe.lua:12: " when called from Lua code
    lua_pushstring(L, g_msg);
    lua_concat(L, 2);
  }
  lua_error(L);
  std::abort();  // unreachable: lua_error does not return
}

int exit_request(lua_State* L) {
  lua_getfield(L, LUA_REGISTRYINDEX, kExitKey);
  int code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : -1;
  lua_pop(L, 1);
  return code;
}

// ---- argument checks ----------------------------------------------------------------
const char* type_name(lua_State* L, int idx) {
  if (lua_type(L, idx) == LUA_TUSERDATA && lua_getmetatable(L, idx)) {
    lua_pushliteral(L, "__name");
    lua_rawget(L, -2);
    const char* n = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : nullptr;
    lua_pop(L, 2);  // the name string stays alive: it is interned in the metatable
    if (n) return n;
  }
  return luaL_typename(L, idx);
}

void arg_error(lua_State* L, int arg, const char* fn, const std::string& msg) {
  // Like luaL_argerror: in a method call (t:f(x)) self is not counted.
  lua_Debug ar;
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat && std::strcmp(ar.namewhat, "method") == 0) {
      if (--arg == 0) fail("calling '", fn, "' on bad self (", msg, ")");
    }
  }
  fail("bad argument #", arg, " to '", fn, "' (", msg, ")");
}

void type_error(lua_State* L, int arg, const char* fn, const char* expected) {
  const char* got = lua_isnone(L, arg) ? "no value" : type_name(L, arg);
  arg_error(L, arg, fn, std::string(expected) + " expected, got " + got);
}

bool is_none_or_nil(lua_State* L, int arg) { return lua_type(L, arg) <= LUA_TNIL; }

void need_stack(lua_State* L, int n) {
  if (!lua_checkstack(L, n)) fail("Lua stack overflow (table nested too deeply?)");
}

int64_t check_int(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TNUMBER) type_error(L, arg, fn, "integer");
  int ok = 0;
  lua_Integer v = lua_tointegerx(L, arg, &ok);
  if (!ok) arg_error(L, arg, fn, "number has no integer representation");
  return v;
}

double check_num(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TNUMBER) type_error(L, arg, fn, "number");
  return lua_tonumber(L, arg);
}

std::string check_str(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TSTRING) type_error(L, arg, fn, "string");
  size_t n = 0;
  const char* s = lua_tolstring(L, arg, &n);
  return std::string(s, n);
}

bool check_bool(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TBOOLEAN) type_error(L, arg, fn, "boolean");
  return lua_toboolean(L, arg);
}

void check_table(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TTABLE) type_error(L, arg, fn, "table");
}

// ---- options tables ---------------------------------------------------------------
void check_opts(lua_State* L, int arg, const char* fn, std::initializer_list<const char*> known) {
  if (is_none_or_nil(L, arg)) return;
  if (lua_type(L, arg) != LUA_TTABLE) type_error(L, arg, fn, "options table");
  arg = lua_absindex(L, arg);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    lua_pop(L, 1);  // value
    bool ok = false;
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char* k = lua_tostring(L, -1);
      for (const char* n : known) ok = ok || std::strcmp(k, n) == 0;
    }
    if (!ok) {
      std::string key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : std::string("(") + luaL_typename(L, -1) + " key)";
      lua_pop(L, 1);
      std::string list;
      for (const char* n : known) list += (list.empty() ? "" : ", ") + std::string(n);
      fail("unknown option '", key, "' to '", fn, "' (known: ", list, ")");
    }
  }
}

// Pushes field `key` of the options table at `arg` (nil when there is no table).
static int push_field(lua_State* L, int arg, const char* key) {
  if (lua_type(L, arg) != LUA_TTABLE) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  arg = lua_absindex(L, arg);
  lua_pushstring(L, key);
  return lua_rawget(L, arg);
}

[[noreturn]] static void field_error(lua_State* L, const char* key, const char* fn, const char* expected) {
  std::string got = luaL_typename(L, -1);
  lua_pop(L, 1);
  fail("bad option '", key, "' to '", fn, "' (", expected, " expected, got ", got, ")");
}

int64_t opt_field_int(lua_State* L, int arg, const char* key, const char* fn, int64_t def) {
  int t = push_field(L, arg, key);
  if (t == LUA_TNIL) { lua_pop(L, 1); return def; }
  int ok = 0;
  lua_Integer v = t == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
  if (!ok) field_error(L, key, fn, "integer");
  lua_pop(L, 1);
  return v;
}

double opt_field_num(lua_State* L, int arg, const char* key, const char* fn, double def) {
  int t = push_field(L, arg, key);
  if (t == LUA_TNIL) { lua_pop(L, 1); return def; }
  if (t != LUA_TNUMBER) field_error(L, key, fn, "number");
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

bool opt_field_bool(lua_State* L, int arg, const char* key, const char* fn, bool def) {
  int t = push_field(L, arg, key);
  if (t == LUA_TNIL) { lua_pop(L, 1); return def; }
  if (t != LUA_TBOOLEAN) field_error(L, key, fn, "boolean");
  bool v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

std::string opt_field_str(lua_State* L, int arg, const char* key, const char* fn, const std::string& def) {
  int t = push_field(L, arg, key);
  if (t == LUA_TNIL) { lua_pop(L, 1); return def; }
  if (t != LUA_TSTRING) field_error(L, key, fn, "string");
  std::string v = lua_tostring(L, -1);
  lua_pop(L, 1);
  return v;
}

// ---- shapes and pushes --------------------------------------------------------------
Shape shape_arg(lua_State* L, int arg, const char* fn, int* next) {
  Shape s;
  if (lua_type(L, arg) == LUA_TTABLE) {
    const int t = lua_absindex(L, arg);
    const lua_Integer n = (lua_Integer)lua_rawlen(L, t);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, t, i);
      int ok = 0;
      lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
      std::string got = luaL_typename(L, -1);
      lua_pop(L, 1);
      if (!ok) arg_error(L, arg, fn, "shape entry " + std::to_string(i) + " is not an integer (" + got + ")");
      if (v < -1) arg_error(L, arg, fn, "shape entry " + std::to_string(i) + " is negative");
      s.push_back(v);
    }
    if (next) *next = arg + 1;
    return s;
  }
  if (lua_type(L, arg) != LUA_TNUMBER) type_error(L, arg, fn, "shape table");
  int i = arg;
  while (lua_type(L, i) == LUA_TNUMBER) s.push_back(check_int(L, i++, fn));
  if (next) *next = i;
  return s;
}

void push_shape(lua_State* L, const Shape& s) {
  lua_createtable(L, (int)s.size(), 0);
  for (size_t i = 0; i < s.size(); ++i) {
    lua_pushinteger(L, s[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

void push_numbers(lua_State* L, const std::vector<double>& v) {
  lua_createtable(L, (int)v.size(), 0);
  for (size_t i = 0; i < v.size(); ++i) {
    lua_pushnumber(L, v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

void push_str(lua_State* L, const std::string& s) { lua_pushlstring(L, s.data(), s.size()); }

std::vector<int32_t> ids_from_table(lua_State* L, int idx, const char* fn) {
  if (lua_type(L, idx) != LUA_TTABLE) type_error(L, idx, fn, "table of token ids");
  const int t = lua_absindex(L, idx);
  const lua_Integer n = (lua_Integer)lua_rawlen(L, t);
  std::vector<int32_t> ids;
  ids.reserve((size_t)n);
  for (lua_Integer i = 1; i <= n; ++i) {
    lua_rawgeti(L, t, i);
    int ok = 0;
    lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
    lua_pop(L, 1);
    if (!ok || v < INT32_MIN || v > INT32_MAX)
      fail(fn, ": token id at position ", i, " is not an integer id");
    ids.push_back((int32_t)v);
  }
  return ids;
}

void* check_udata(lua_State* L, int arg, const char* mt, const char* fn) {
  void* p = luaL_testudata(L, arg, mt);
  if (!p) type_error(L, arg, fn, mt);
  return p;
}

// ---- registration with a declared arity ------------------------------------------------
static const char* kArityKey = "qforge.arity";
static const char* kClassesKey = "qforge.classes";

// Pushes registry[key], creating the table the first time.
static void registry_table(lua_State* L, const char* key) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, key);
  }
}

// The message for a call whose arguments from `first_extra` on are unused. Counts like
// luaL_argerror: self is not counted in a method call t:f(...).
static void too_many_message(lua_State* L, int first_extra, const char* fn, char* buf, size_t n) {
  int got = lua_gettop(L), max = first_extra - 1;
  lua_Debug ar;
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat && std::strcmp(ar.namewhat, "method") == 0 && max > 0) --max, --got, --first_extra;
  }
  if (max == 0) std::snprintf(buf, n, "bad argument #%d to '%s' (no arguments expected, got %d)", first_extra, fn, got);
  else
    std::snprintf(buf, n, "bad argument #%d to '%s' (at most %d argument%s expected, got %d)", first_extra, fn, max,
                  max == 1 ? "" : "s", got);
}

void too_many_args(lua_State* L, int first_extra, const char* fn) {
  char buf[256];
  too_many_message(L, first_extra, fn, buf, sizeof buf);
  fail(buf);
}

// Upvalues: the guarded body (a light C function), the arity, the name. Plain C style: it may
// raise a Lua error, so it holds no C++ object; the body is called directly, in this frame.
static int checked_call(lua_State* L) {
  const lua_Integer max = lua_tointeger(L, lua_upvalueindex(2));
  if (max >= 0 && lua_gettop(L) > max) {
    char buf[256];
    too_many_message(L, (int)max + 1, lua_tostring(L, lua_upvalueindex(3)), buf, sizeof buf);
    detail::stash_message(buf);
    detail::raise_stashed(L, -1);
  }
  return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

void set_funcs(lua_State* L, int t, std::initializer_list<Fn> fns) {
  t = lua_absindex(L, t);
  registry_table(L, kArityKey);
  for (const Fn& f : fns) {
    lua_pushcfunction(L, f.f);
    lua_pushinteger(L, f.max_args);
    lua_pushstring(L, f.name);
    lua_pushcclosure(L, checked_call, 3);
    lua_pushvalue(L, -1);
    lua_pushinteger(L, f.max_args);
    lua_rawset(L, -4);  // arity[closure] = max_args
    lua_setfield(L, t, f.name);
  }
  lua_pop(L, 1);
}

// __index of a class. Upvalues: the methods table, the class name, the hint (or nil).
static int class_index(lua_State* L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
    fail("no method '", lua_tostring(L, 2), "' on ", lua_tostring(L, lua_upvalueindex(2)));
  }
  char key[96];
  if (lua_isinteger(L, 2)) std::snprintf(key, sizeof key, "[%lld]", (long long)lua_tointeger(L, 2));
  else if (lua_type(L, 2) == LUA_TNUMBER) std::snprintf(key, sizeof key, "[%.14g]", lua_tonumber(L, 2));
  else std::snprintf(key, sizeof key, "a %s key", type_name(L, 2));
  const char* hint = lua_tostring(L, lua_upvalueindex(3));
  fail(lua_tostring(L, lua_upvalueindex(2)), " cannot be indexed with ", key, hint ? "; " : "", hint ? hint : "");
}

void register_class(lua_State* L, const char* mt, std::initializer_list<Fn> methods, lua_CFunction gc,
                    lua_CFunction tostr, const char* index_hint) {
  luaL_newmetatable(L, mt);
  if (gc) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
  }
  if (tostr) {
    lua_pushcfunction(L, tostr);
    lua_setfield(L, -2, "__tostring");
  }
  if (methods.size()) {
    lua_createtable(L, 0, (int)methods.size());
    set_funcs(L, -1, methods);
    registry_table(L, kClassesKey);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, mt);  // classes[mt] = methods
    lua_pop(L, 1);
    lua_pushstring(L, mt);
    if (index_hint) lua_pushstring(L, index_hint);
    else lua_pushnil(L);
    lua_pushcclosure(L, qf_guard<class_index>, 3);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

void add_methods(lua_State* L, const char* mt, std::initializer_list<Fn> methods) {
  registry_table(L, kClassesKey);
  if (lua_getfield(L, -1, mt) != LUA_TTABLE) fail("add_methods: class ", mt, " is not registered yet");
  set_funcs(L, -1, methods);
  lua_pop(L, 2);
}

void set_introspection(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  registry_table(L, kArityKey);
  lua_setfield(L, mod, "_arity");
  registry_table(L, kClassesKey);
  lua_setfield(L, mod, "_classes");
}

}  // namespace qf::lua
