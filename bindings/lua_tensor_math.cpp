// qforge — Lua bindings of engine/core/tensor_math: elementwise math with broadcasting.
#include "lua_util.h"

namespace qf::lua {
void open_tensor_math(lua_State* L, int mod) {}
}  // namespace qf::lua
