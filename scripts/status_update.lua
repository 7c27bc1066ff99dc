-- status_update.lua: tracks the delivery state of each message (sent -> delivered -> read,
-- or failed), warns about failures and ignores updates that arrive out of order.
-- Wired with `function: on_status` in hooks.yaml.example.

local rank = { sent = 1, delivered = 2, read = 3, failed = 4 }
local last = {}          -- message_id -> latest status seen by this worker thread
local tracked = 0
local MAX_TRACKED = 10000 -- keep memory bounded: forget everything past this

function on_status(event)
  local d = event.payload.data
  if type(d) ~= "table" or type(d.message_id) ~= "string" or not rank[d.status] then
    return false, "status_update needs data.message_id and data.status " ..
                  "(sent, delivered, read or failed)"
  end

  local before = last[d.message_id]
  if before and rank[before] >= rank[d.status] then
    wapphook.log("debug", d.message_id .. ": " .. d.status .. " after " .. before .. ", ignored")
    return true
  end

  if not before then
    tracked = tracked + 1
    if tracked > MAX_TRACKED then last, tracked = {}, 1 end
  end
  last[d.message_id] = d.status

  if d.status == "failed" then
    local reason = d.error
    if reason == wapphook.null or reason == nil then reason = "no reason given" end
    wapphook.log("warn", "delivery of " .. d.message_id .. " failed: " .. tostring(reason))
  end
  return true
end
