-- files_mods.sub, found as files_mods/sub/init.lua beside the recipe.
return { name = "sub" }
