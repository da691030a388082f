// qforge — Lua bindings of engine/core/tensor_index: sort/topk/quantile, constructors, indexing.
#include "lua_util.h"

namespace qf::lua {
void open_tensor_index(lua_State* L, int mod) {}
}  // namespace qf::lua
