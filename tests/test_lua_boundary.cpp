// The C++/Lua boundary: C++ exceptions become ordinary Lua errors carrying their message,
// C++ destructors run before the Lua error is raised, and the state stays usable.
#include <doctest/doctest.h>

#include <lua.hpp>
#include <string>

#include "lua_util.h"
#include "runner.h"

using qf::lua::qf_guard;

namespace {

// A lua_State with the qforge module loaded as `qf` (no runner: no run directory).
struct State {
  lua_State* L;
  State() : L(luaL_newstate()) {
    luaL_openlibs(L);
    luaL_requiref(L, "qforge", luaopen_qforge, 1);
    lua_setglobal(L, "qf");
  }
  ~State() { lua_close(L); }
  // Runs a chunk; returns "" on success, else the error message.
  std::string run(const std::string& code) {
    int top = lua_gettop(L);
    std::string err;
    if (luaL_dostring(L, code.c_str()) != LUA_OK) err = lua_tostring(L, -1) ? lua_tostring(L, -1) : "(non-string error)";
    lua_settop(L, top);
    return err;
  }
  // Evaluates an expression returning a string (or a value tostring() can show).
  std::string eval(const std::string& expr) {
    int top = lua_gettop(L);
    std::string r;
    if (luaL_dostring(L, ("return tostring(" + expr + ")").c_str()) == LUA_OK) r = lua_tostring(L, -1);
    else r = std::string("ERROR: ") + lua_tostring(L, -1);
    lua_settop(L, top);
    return r;
  }
  void gc() { lua_gc(L, LUA_GCCOLLECT); }
};

// Counts live Probe objects: proves destructors ran when an exception left a function.
int g_probes = 0;
struct Probe {
  std::string payload = std::string(1000, 'x');  // a heap allocation that would leak
  Probe() { ++g_probes; }
  ~Probe() { --g_probes; }
};

int throws_with_locals(lua_State* L) {
  Probe a, b;
  qf::Tensor t = qf::Tensor::zeros({4, 4});
  qf::fail("boom from C++ with ", g_probes, " probes alive");
}
int throws_int(lua_State*) { throw 42; }
int requests_exit(lua_State*) {
  Probe p;
  throw qf::lua::ExitRequest{3};
}
int bad_arg(lua_State* L) {
  Probe p;
  qf::lua::check_int(L, 2, "thing");
  return 0;
}

}  // namespace

TEST_CASE("a C++ exception becomes a Lua error with its message") {
  State s;
  std::string err = s.run("local t = qf.zeros{10}\nlocal x = t:get(100)");
  CHECK(err.find("index 100 out of bounds") != std::string::npos);
  CHECK(err.find("[string") != std::string::npos);  // luaL_where location of the caller
  CHECK(err.find(":2:") != std::string::npos);

  // pcall catches it like any Lua error; the message is intact.
  CHECK(s.eval("select(2, pcall(qf.zeros{10}.get, qf.zeros{10}, 100))") ==
        "get: index 100 out of bounds for dimension 1 of size 10 (shape [10])");
  // The state is still usable.
  CHECK(s.eval("qf.tensor{1, 2, 3}:sum()") == "6.0");
}

TEST_CASE("destructors of C++ locals run before the Lua error is raised") {
  State s;
  lua_pushcfunction(s.L, qf_guard<throws_with_locals>);
  lua_setglobal(s.L, "throws_with_locals");
  g_probes = 0;
  std::string err = s.run("throws_with_locals()");
  CHECK(err.find("boom from C++ with 2 probes alive") != std::string::npos);
  CHECK(g_probes == 0);
  for (int i = 0; i < 1000; ++i) s.run("pcall(throws_with_locals)");
  CHECK(g_probes == 0);
  CHECK(s.eval("select(2, pcall(throws_with_locals))") == "boom from C++ with 2 probes alive");
}

TEST_CASE("argument errors name the function and the argument") {
  State s;
  lua_pushcfunction(s.L, qf_guard<bad_arg>);
  lua_setglobal(s.L, "bad_arg");
  g_probes = 0;
  CHECK(s.eval("select(2, pcall(bad_arg, 1, 'x'))") == "bad argument #2 to 'thing' (integer expected, got string)");
  CHECK(g_probes == 0);
  CHECK(s.eval("select(2, pcall(function() local t = qf.zeros{2, 2}; return t:narrow(1, 'x', 1) end))")
            .find("bad argument #2 to 'narrow' (integer expected, got string)") != std::string::npos);
  CHECK(s.eval("select(2, pcall(qf.zeros{2}.narrow, qf.zeros{2}, {}, 1, 1))") ==
        "bad argument #2 to 'narrow' (integer expected, got table)");  // called as a function: self counts
  CHECK(s.eval("select(2, pcall(qf.zeros{2}.get, 5, 1))") ==
        "bad argument #1 to 'get' (qforge.Tensor expected, got number)");
}

TEST_CASE("non-std exceptions and exit requests") {
  State s;
  lua_pushcfunction(s.L, qf_guard<throws_int>);
  lua_setglobal(s.L, "throws_int");
  lua_pushcfunction(s.L, qf_guard<requests_exit>);
  lua_setglobal(s.L, "requests_exit");
  CHECK(s.run("throws_int()").find("unknown C++ exception") != std::string::npos);
  CHECK(qf::lua::exit_request(s.L) == -1);
  g_probes = 0;
  CHECK(!s.run("requests_exit()").empty());
  CHECK(qf::lua::exit_request(s.L) == 3);
  CHECK(g_probes == 0);
}

TEST_CASE("tensor views hold storage; collected userdata release it") {
  State s;
  const int64_t live0 = qf::lua::live_tensors();
  qf::Tensor big = qf::Tensor::zeros({100, 100});
  CHECK(big.storage().use_count() == 1);
  qf::lua::push_tensor(s.L, big);
  lua_setglobal(s.L, "BIG");
  CHECK(big.storage().use_count() == 2);
  CHECK(qf::lua::live_tensors() == live0 + 1);

  // Views made in Lua and errors raised while they are alive.
  std::string err = s.run(
      "local v = BIG:narrow(1, 1, 10):t()\n"
      "local w = v:contiguous()\n"
      "v:set(1, 1, 7)\n"
      "assert(BIG:get(1, 1) == 7)\n"
      "for i = 1, 100 do pcall(v.get, v, 99, 99) end\n"
      "local ok, e = pcall(BIG.copy, BIG, w)\n"
      "assert(not ok and e:find('shape mismatch', 1, true), e)\n"
      "error(v:get(1000, 1))");
  CHECK(err.find("index 1000 out of bounds") != std::string::npos);
  CHECK(big.get({0, 0}) == 7.f);  // the write went through the view into our storage

  s.run("BIG = nil");
  s.gc();
  CHECK(big.storage().use_count() == 1);  // every Lua view was destroyed
  CHECK(qf::lua::live_tensors() == live0);
}

TEST_CASE("many errors do not leak tensors") {
  State s;
  const int64_t live0 = qf::lua::live_tensors();
  CHECK(s.run("local t = qf.zeros{4, 4}\n"
              "for i = 1, 5000 do\n"
              "  pcall(function() return (t:narrow(1, 1, 2) + t):matmul(t) end)\n"
              "  pcall(function() return t:to('f9') end)\n"
              "  pcall(function() return qf.tensor{{1}, {1, 2}} end)\n"
              "end") == "");
  s.gc();
  CHECK(qf::lua::live_tensors() == live0);
}

TEST_CASE("module functions outside a run") {
  State s;
  CHECK(s.eval("qf.options{bits = 4}.bits") == "4");
  CHECK(s.eval("qf.run_dir()") == "nil");
  CHECK(s.eval("qf.seed()") == "0");
  CHECK(s.run("qf.record('x', 1)").find("only available under 'qforge run'") != std::string::npos);
  CHECK(s.eval("qf.version().version") != "");
}

TEST_CASE("load errors name the path") {
  State s;
  std::string err = s.run("qf.load_model('/no/such/model/dir')");
  CHECK(err.find("/no/such/model/dir") != std::string::npos);
  err = s.run("qf.read_text('/no/such/file.txt')");
  CHECK(err.find("/no/such/file.txt") != std::string::npos);
  const std::string model = std::string(QF_SHARED_DIR) + "/models/stories260K";
  CHECK(s.eval("qf.load_model('" + model + "'):config().dim") == "64");
  CHECK(s.eval("select(2, pcall(function() return qf.load_model('" + model +
               "'):weight(9, 'q') end))")
            .find("block 9 out of range") != std::string::npos);
}
