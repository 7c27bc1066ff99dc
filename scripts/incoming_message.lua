-- incoming_message.lua: answers every incoming message through the messaging API.
--
-- wapphook calls handle(event) once per event. The top level (this file) runs once per
-- worker thread. WAPPCLOUD_API_URL (say https://api.wappcloud.example/v1/messages) and
-- WAPPCLOUD_API_TOKEN come from the server's environment; without a URL the script only
-- logs. The URL's host must be reachable under http.allow in hooks.yaml.
-- Return nothing (or true) for success; return false, "reason" (or raise an error) for
-- failure: in durable mode the spool then retries this handler with backoff, which is what
-- makes "reply to every message" reliable; in sync mode the sender redelivers.

local api = wapphook.env("WAPPCLOUD_API_URL")
local token = wapphook.env("WAPPCLOUD_API_TOKEN") or ""
local replied = wapphook.shared.replies -- every thread's replies: a retry answers once

---@param event wapphook.Event
function handle(event)
  local data = event.payload.data
  if type(data) ~= "table" then
    return false, "incoming_message without a data object"
  end

  -- Wappcloud sends `from` as a phone string or as {phone=..., name=...}; accept both.
  local from, phone = data.from, data.from
  if type(from) == "table" then from, phone = from.name or from.phone, from.phone end
  local text = data.text
  if type(text) == "table" then text = text.body end
  if type(from) ~= "string" or type(text) ~= "string" then
    return false, "incoming_message needs data.from and data.text"
  end
  wapphook.log("info", string.format("message %s from %s: %q", tostring(data.message_id),
    from, text))

  if not api then return end                        -- nowhere to answer: logging is all
  local id = tostring(data.message_id)
  if replied:get(id) then return end                -- answered on an earlier delivery

  local res, err = wapphook.http.post(api, wapphook.json.encode({to = phone, text =
    "Thanks, " .. from .. ": we got your message."}), {
    headers = {["Content-Type"] = "application/json", Authorization = "Bearer " .. token},
    timeout_ms = 3000,
  })
  if not res then return false, "reply failed: " .. err end
  if res.status >= 300 then return false, "reply refused: HTTP " .. res.status end
  replied:set(id, true, 86400)                      -- a day: longer than any retry
end
