-- wrk script: POSTs one fixed signed event on every request (keep-alive).
-- usage: wrk -s bench/post.lua URL -- SIGNATURE BODY_FILE [EVENT_TYPE]
function init(args)
  local f = assert(io.open(args[2], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Wappcloud-Signature"] = args[1]
  wrk.headers["X-Wappcloud-Event"] = args[3] or "incoming_message"
end
