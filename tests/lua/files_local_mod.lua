-- A local module beside tests/lua/test_files.lua: `require` must find it (the recipe's
-- directory is searched) and the run directory must hold a copy of it.
local sub = require("files_mods.sub")
return { answer = 42, sub = sub }
