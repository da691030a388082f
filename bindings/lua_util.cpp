#include "lua_util.h"

#include <cmath>
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

int64_t opt_int(lua_State* L, int arg, const char* fn, int64_t def) {
  return is_none_or_nil(L, arg) ? def : check_int(L, arg, fn);
}

std::string opt_str(lua_State* L, int arg, const char* fn, const std::string& def) {
  return is_none_or_nil(L, arg) ? def : check_str(L, arg, fn);
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

void register_class(lua_State* L, const char* mt, const luaL_Reg* methods, lua_CFunction gc, lua_CFunction tostr) {
  luaL_newmetatable(L, mt);
  if (gc) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
  }
  if (tostr) {
    lua_pushcfunction(L, tostr);
    lua_setfield(L, -2, "__tostring");
  }
  if (methods) {
    lua_newtable(L);  // not luaL_newlib: `methods` is a pointer, its size hint would be bogus
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

}  // namespace qf::lua
