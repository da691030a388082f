// Allocation file (C.load_allocation in bindings/lua/cvxq.lua), through the Lua module as a
// recipe calls it, against stories260K loaded once. A Lua error is the expected rejection; a
// file that loads must give a finite rate in [0, 8] (a NaN bit depth used to load).
#include <lua.hpp>

#include <cmath>

#include "fuzz_util.h"
#include "lua_util.h"

#ifndef QF_SHARED_DIR
#define QF_SHARED_DIR "../shared"
#endif

static lua_State* state() {
  static lua_State* L = [] {
    lua_State* L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "qforge", luaopen_qforge, 1);
    lua_setglobal(L, "qf");
    const char* env = std::getenv("QF_FUZZ_MODEL");
    const std::string model = env ? env : std::string(QF_SHARED_DIR) + "/models/stories260K";
    lua_pushstring(L, model.c_str());
    lua_setglobal(L, "FUZZ_MODEL");
    const char* code =
        "local C = require('qforge.cvxq')\n"
        "local m = qf.load_model(FUZZ_MODEL)\n"
        "function fuzz_one(path) return C.load_allocation(path, m, { target_bits = 2 }).rate end\n";
    if (luaL_dostring(L, code) != LUA_OK) qf_fuzz::finding(std::string("setup: ") + lua_tostring(L, -1));
    return L;
  }();
  return L;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lua_State* L = state();
  const std::string p = qf_fuzz::input_file(data, size, "allocation.safetensors");
  return qf_fuzz::run([&] {
    const int top = lua_gettop(L);
    lua_getglobal(L, "fuzz_one");
    lua_pushstring(L, p.c_str());
    static const bool verbose = std::getenv("QF_FUZZ_VERBOSE") != nullptr;
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
      if (verbose) std::fprintf(stderr, "  rate %g\n", lua_tonumber(L, -1));
      const double rate = lua_tonumber(L, -1);
      if (!(rate >= 0 && rate <= 8)) qf_fuzz::finding("allocation loaded with rate " + std::to_string(rate));
    } else if (lua_isstring(L, -1)) {
      if (verbose) std::fprintf(stderr, "  rejected: %.300s\n", lua_tostring(L, -1));
    } else {
      qf_fuzz::finding("non-string Lua error");
    }
    lua_settop(L, top);
    lua_gc(L, LUA_GCCOLLECT);
  });
}
