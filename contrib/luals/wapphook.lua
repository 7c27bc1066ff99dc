---@meta wapphook
-- Definitions of wapphook's Lua API for lua-language-server (LuaLS): completion, hover docs
-- and type checks in editors. Nothing here runs in wapphook; the functions are stubs. Point
-- LuaLS at this folder (`"workspace.library": ["/usr/share/wapphook/luals"]` in .luarc.json;
-- this repository's own .luarc.json does) and annotate a handler with
-- `---@param event wapphook.Event`. Kept equal to the real module by the test
-- lua_definitions (tests/runtime/test_cli.c).

---The event a handler gets: `function handle(event)`.
---@class wapphook.Event
---@field type string The event type (the X-Wappcloud-Event header).
---@field payload table<string, any> The JSON body as a table: objects -> tables, arrays -> 1-based sequences, integers -> Lua integers, reals -> floats, null -> wapphook.null. Converted on first access.
---@field body string The raw body, exactly the bytes that were signed.
---@field headers table<string, string> Request headers, names lower-cased (first value of a repeated header).
---@field received_at number Unix time in seconds (float) when the request arrived.

---What a handler returns: nothing or `true` succeeds; `false[, message]` (or `nil, message`) fails.
---@alias wapphook.Result true|false|nil

---@alias wapphook.LogLevel "debug"|"info"|"warn"|"error"

---The response of an outbound HTTP request.
---@class wapphook.HttpResponse
---@field status integer The HTTP status code (a 3xx is a response: redirects are not followed).
---@field headers table<string, string> Response headers, names lower-cased.
---@field body string The response body (at most http.max_response_bytes).

---Options of wapphook.http.request (and of get and post, without url/method/body).
---@class wapphook.HttpRequest
---@field url string An http:// or https:// URL; its addresses must pass http.allow / allow_private.
---@field method? string Default "GET".
---@field headers? table<string, string> Request headers.
---@field body? string Request body, default "".
---@field timeout_ms? integer Per request; capped by http.timeout_ms and the handler's remaining budget.

---Arguments of wapphook.exec.
---@class wapphook.ExecRequest
---@field argv string[] {path, args...}: path must be in exec.allow; no shell.
---@field stdin? string Fed to the command's standard input.
---@field env? table<string, string> The command's environment besides PATH and LANG.
---@field timeout_ms? integer SIGTERM then SIGKILL to its process group at the sooner of this and the budget.

---What a command did.
---@class wapphook.ExecResult
---@field code integer|nil Exit status, nil if killed by a signal.
---@field signal integer|nil The signal that ended it, if any.
---@field stdout string Standard output (at most exec.max_output_bytes).
---@field stderr string Standard error (at most exec.max_output_bytes).
---@field timed_out boolean The deadline ended it.
---@field truncated boolean An output passed exec.max_output_bytes.

---A dictionary shared by every thread and script (lua.shared in the manifest).
---Keys are strings; values strings, numbers or booleans.
---@class wapphook.SharedDict
local SharedDict = {}

---The value stored under `key`, or nil.
---@param key string
---@return string|number|boolean|nil
function SharedDict:get(key) end

---Stores `value` (nil deletes), for `ttl_s` seconds (0 or absent: no expiry).
---Returns true, nil, forcible (older entries were evicted), or false, "too large".
---@param key string
---@param value string|number|boolean|nil
---@param ttl_s? number
---@return boolean ok, string|nil err, boolean|nil forcible
function SharedDict:set(key, value, ttl_s) end

---Like set, but only if `key` is absent: false, "exists" otherwise.
---@param key string
---@param value string|number|boolean
---@param ttl_s? number
---@return boolean ok, string|nil err, boolean|nil forcible
function SharedDict:add(key, value, ttl_s) end

---Adds `n` atomically and returns the new value; `init` (with `ttl_s`) when absent,
---else nil, "not found"; nil, "not an integer" for a non-integer value.
---@param key string
---@param n integer
---@param init? integer
---@param ttl_s? number
---@return integer|nil value, string|nil err
function SharedDict:incr(key, n, init, ttl_s) end

---Removes `key`.
---@param key string
function SharedDict:delete(key) end

---Seconds left before `key` expires (0: never), or nil, "not found".
---@param key string
---@return number|nil seconds, string|nil err
function SharedDict:ttl(key) end

---The wapphook module: a global, and what `require "wapphook"` returns.
---@class wapphook
wapphook = {}

---JSON null, as it appears in event.payload (the same value as wapphook.json.null).
---@type lightuserdata
wapphook.null = false

---Writes a line to wapphook's log, with the script's name. `print` logs at info too.
---@param level wapphook.LogLevel
---@param message string
function wapphook.log(level, message) end

---HMAC-SHA256 of `data` with `key`, as lower-case hex.
---@param key string
---@param data string
---@return string hex
function wapphook.hmac_sha256(key, data) end

---The server's environment variable `name`, or nil.
---@param name string
---@return string|nil
function wapphook.env(name) end

---The current Unix time in seconds (float).
---@return number
function wapphook.now() end

---Runs a command in exec.allow (no shell), inside the handler's budget.
---On failure: nil, err starting with "not allowed", "busy" or "spawn".
---@param req wapphook.ExecRequest
---@return wapphook.ExecResult|nil result, string|nil err
function wapphook.exec(req) end

---JSON text from and to Lua values.
wapphook.json = {}

---JSON null: encode it to write null.
---@type lightuserdata
wapphook.json.null = false

---The JSON text of `value` (tables with 1..n keys are arrays, others objects).
---@param value any
---@return string
function wapphook.json.encode(value) end

---The Lua value of a JSON text, or nil, message on bad JSON.
---@param text string
---@return any value, string|nil err
function wapphook.json.decode(text) end

---Outbound HTTP(S) under the address policy (http: in the manifest) and the handler's budget.
---On failure: nil, err starting with "timeout", "refused address", "not allowed", "dns",
---"connect", "tls", "too large" or "protocol", then ": " and the detail.
wapphook.http = {}

---@param req wapphook.HttpRequest
---@return wapphook.HttpResponse|nil response, string|nil err
function wapphook.http.request(req) end

---A GET of `url`; `opts` as in request (headers, timeout_ms).
---@param url string
---@param opts? wapphook.HttpRequest|table
---@return wapphook.HttpResponse|nil response, string|nil err
function wapphook.http.get(url, opts) end

---A POST of `body` to `url`; `opts` as in request (headers, timeout_ms).
---@param url string
---@param body string
---@param opts? wapphook.HttpRequest|table
---@return wapphook.HttpResponse|nil response, string|nil err
function wapphook.http.post(url, body, opts) end

---The dictionaries named in lua.shared, by name: `wapphook.shared.seen:add(id, true, 86400)`.
---@type table<string, wapphook.SharedDict>
wapphook.shared = {}

return wapphook, SharedDict
