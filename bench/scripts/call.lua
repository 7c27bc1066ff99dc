-- The outbound benchmark's handler: one keep-alive HTTP call per event to a local upstream
-- (a second wapphook answering the GET challenge), as a reply to an API would.
local url = "http://127.0.0.1:18090/webhook?challenge=bench"

function handle(event)
  local res, err = wapphook.http.get(url)
  if not res then return false, err end
  if res.status ~= 200 then return false, "upstream answered " .. res.status end
end
