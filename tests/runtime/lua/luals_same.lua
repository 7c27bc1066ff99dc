-- Run by `wapphook try` (lua.sandbox: false) in test_cli.c: the LuaLS definition file
-- (contrib/luals/wapphook.lua, path in WH_LUALS_META) must describe exactly the real module
-- and event. Fails with the first difference.
local meta_path = wapphook.env("WH_LUALS_META")

local function kind(v)
  local t = type(v)
  if t == "function" or t == "table" then return t end
  return "value"
end

-- every key of `real` in `doc` with the same kind, and the other way round
local function same(real, doc, name, diffs)
  for k, v in pairs(real) do
    local d = doc[k]
    if type(k) ~= "string" then -- the host's own keys (a dictionary's handle)
    elseif d == nil then
      diffs[#diffs + 1] = name .. "." .. k .. " is not documented"
    elseif kind(d) ~= kind(v) then
      diffs[#diffs + 1] = name .. "." .. k .. " is a " .. kind(v) .. ", documented as a " .. kind(d)
    elseif kind(v) == "table" and k ~= "shared" then
      same(v, d, name .. "." .. k, diffs)
    end
  end
  for k in pairs(doc) do
    if real[k] == nil then diffs[#diffs + 1] = name .. "." .. k .. " is documented, not real" end
  end
end

function handle(event)
  local env = {}
  local chunk = assert(loadfile(meta_path, "t", env))
  local doc, doc_dict = chunk()
  local diffs = {}
  same(wapphook, doc, "wapphook", diffs)
  -- a dictionary's methods (the manifest names one, "d")
  same(wapphook.shared.d, doc_dict, "wapphook.shared.NAME", diffs)

  -- the event: each ---@field of wapphook.Event present with its type, no other field
  local text = assert(io.open(meta_path)):read("a")
  local block = text:match("%-%-%-@class wapphook%.Event\n(.-)\n\n")
  local declared = {}
  for f, t in block:gmatch("%-%-%-@field (%S+) (%S+)") do
    declared[f] = true
    local want = t:match("^table") and "table" or t
    if type(event[f]) ~= want then
      diffs[#diffs + 1] = "event." .. f .. " is a " .. type(event[f]) .. ", documented as " .. t
    end
  end
  for k in pairs(event) do
    if type(k) == "string" and not declared[k] then diffs[#diffs + 1] = "event." .. k .. " is not documented" end
  end
  if not declared.payload then diffs[#diffs + 1] = "event.payload is not documented" end

  if #diffs > 0 then return false, table.concat(diffs, "; ") end
  wapphook.log("info", "definitions match the module")
end
