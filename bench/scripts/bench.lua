-- The benchmark's handler: reads fields of the payload, as a real handler would.
local count = 0

function handle(event)
  local d = event.payload.data
  if type(d.from) ~= "table" or type(d.text) ~= "table" or #d.text.body == 0 then
    return false, "unexpected payload"
  end
  count = count + 1
end
