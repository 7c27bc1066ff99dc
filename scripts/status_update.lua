-- status_update.lua: tracks the delivery state of each message (sent -> delivered -> read,
-- or failed), warns about failures and ignores updates that arrive out of order.
-- Wired with `function: on_status` in hooks.yaml.example. The latest state per message is
-- kept in the shared dictionary `statuses` (lua.shared), so every worker thread sees the
-- same one; a full dictionary forgets the least recently used messages first.

local rank = { sent = 1, delivered = 2, read = 3, failed = 4 }
local statuses = wapphook.shared.statuses

---@param event wapphook.Event
function on_status(event)
  local d = event.payload.data
  if type(d) ~= "table" or type(d.message_id) ~= "string" or not rank[d.status] then
    return false, "status_update needs data.message_id and data.status " ..
                  "(sent, delivered, read or failed)"
  end

  local before = statuses:get(d.message_id)
  if before and rank[before] >= rank[d.status] then
    wapphook.log("debug", d.message_id .. ": " .. d.status .. " after " .. before .. ", ignored")
    return true
  end
  statuses:set(d.message_id, d.status, 7 * 86400)

  if d.status == "failed" then
    local reason = d.error
    if reason == wapphook.null or reason == nil then reason = "no reason given" end
    wapphook.log("warn", "delivery of " .. d.message_id .. " failed: " .. tostring(reason))
  end
  return true
end
