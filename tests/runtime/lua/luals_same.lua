-- Run by `wapphook try` (lua.sandbox: false) in test_cli.c: the LuaLS definition file
-- (contrib/luals/wapphook.lua, path in WH_LUALS_META) must describe exactly the real module
-- and event, and its annotations must hang together (parameters named as the functions name
-- them, every wapphook.* type declared). Fails with every difference.
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

  -- the annotations as LuaLS reads them: each function's ---@param lines name its
  -- parameters, in order; every wapphook.* type named is a declared class or alias
  local types, params = {}, {}
  for name in text:gmatch("%-%-%-@class ([%w_.]+)") do types[name] = true end
  for name in text:gmatch("%-%-%-@alias ([%w_.]+)") do types[name] = true end
  for line in text:gmatch("[^\n]*") do
    local p = line:match("^%-%-%-@param ([%w_]+)%??")
    if p then params[#params + 1] = p end
    local fname, args = line:match("^function ([%w_.:]+)%((.-)%) end$")
    if fname then
      local want = {}
      for a in args:gmatch("[%w_]+") do want[#want + 1] = a end
      if table.concat(want, ",") ~= table.concat(params, ",") then
        diffs[#diffs + 1] = fname .. "(" .. args .. ") is documented with @param " ..
                            table.concat(params, ",")
      end
      params = {}
    elseif not line:match("^%-%-%-") then
      params = {}
    end
    local used = {}  -- the type positions of the line
    local t = line:match("^%-%-%-@param [%w_]+%?? (%S+)") or line:match("^%-%-%-@field [%w_]+%?? (%S+)")
              or line:match("^%-%-%-@type (%S+)")
    if t then used[1] = t end
    local r = line:match("^%-%-%-@return (.*)")
    if r then
      for part in (r .. ","):gmatch("%s*([^,]+),") do used[#used + 1] = part:match("^(%S+)") end
    end
    for _, u in ipairs(used) do
      for name in u:gmatch("wapphook%.[%a_][%w_]*") do
        if not types[name] then diffs[#diffs + 1] = "the type " .. name .. " is not declared" end
      end
    end
  end

  if #diffs > 0 then return false, table.concat(diffs, "; ") end
  wapphook.log("info", "definitions match the module")
end
