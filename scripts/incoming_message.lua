-- incoming_message.lua: logs who wrote and what, for every incoming_message event.
--
-- wapphook calls handle(event) once per event. The script's top level (this file) runs once
-- per worker thread, so `seen` below counts the messages this thread handled.
-- Return nothing (or true) for success; return false, "reason" (or raise an error) for
-- failure, and the sender is asked to deliver the event again.

local seen = 0

function handle(event)
  local data = event.payload.data
  if type(data) ~= "table" then
    return false, "incoming_message without a data object"
  end

  -- Wappcloud sends `from` as a phone string or as {phone=..., name=...}; accept both.
  local from = data.from
  if type(from) == "table" then from = from.name or from.phone end
  local text = data.text
  if type(text) == "table" then text = text.body end
  if type(from) ~= "string" or type(text) ~= "string" then
    return false, "incoming_message needs data.from and data.text"
  end

  seen = seen + 1
  wapphook.log("info", string.format("message %s from %s: %q (thread's #%d)",
    tostring(data.message_id), from, text, seen))
end
