// qforge — qf.linalg: Lua bindings of engine/core/linalg.
#include "lua_util.h"

namespace qf::lua {
void open_linalg(lua_State* L, int mod) {}
}  // namespace qf::lua
