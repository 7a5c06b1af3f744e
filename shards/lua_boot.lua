-- durakv's Lua sandbox, run once per Lua state (shards/luaenv.py). It builds what
-- Redis 7.0's script_lua.c builds in C: the `redis` API, readonly library tables,
-- a global table that refuses new globals and reads of missing ones, Redis' pcall
-- (error tables become their message) and the error handler that adds the
-- script's source and line. Plain Lua 5.1 has no readonly tables, so every
-- protected table is an empty proxy whose metatable reads through and refuses
-- writes; setmetatable and rawset refuse the proxies too.
local py = ...
local G = _G
local getinfo, sethook = debug.getinfo, debug.sethook
local raw_setmetatable, raw_rawset, raw_pcall = setmetatable, rawset, pcall
local raw_loadstring, raw_setfenv, raw_getfenv = loadstring, setfenv, getfenv
local tostring, type, error, select, unpack = tostring, type, error, select, unpack
local string_dump = string.dump

local readonly_tables = raw_setmetatable({}, {__mode = 'k'})

local function readonly_error()
  error('Attempt to modify a readonly table', 2)
end

local function protect_meta(mt)
  local shown = raw_setmetatable({}, {__index = mt, __newindex = readonly_error, __metatable = false})
  readonly_tables[shown] = true
  mt.__metatable = shown
  return mt
end

local function readonly(t)
  local proxy = raw_setmetatable({}, protect_meta({__index = t, __newindex = readonly_error}))
  readonly_tables[proxy] = true
  return proxy
end

G.setmetatable = function(t, mt)
  if readonly_tables[t] then error('Attempt to modify a readonly table', 0) end
  return raw_setmetatable(t, mt)
end
G.rawset = function(t, k, v)
  if readonly_tables[t] then error('Attempt to modify a readonly table', 0) end
  return raw_rawset(t, k, v)
end

-- redis.call is a Python callable (a C function to Lua, so a script's `return
-- redis.call(...)` keeps its frame for the error's line); its errors arrive as
-- the Python exception, which carries Redis' error table.
local unwrap = py.unwrap
local function error_value(err)
  if type(err) == 'userdata' then
    local t = unwrap(err)
    if t ~= nil then return t end
  end
  return err
end

-- Redis' pcall: a Redis error table is caught as its message.
G.pcall = function(f, ...)
  local r = {raw_pcall(f, ...)}
  if not r[1] then
    local err = error_value(r[2])
    if type(err) == 'table' and type(err.err) == 'string' then return false, err.err end
    return false, err
  end
  return unpack(r, 1, table.maxn(r))
end

-- Compiled chunks run in the caller's environment; binary chunks are refused.
G.loadstring = function(s, name)
  if type(s) == 'string' and s:sub(1, 1) == '\27' then
    return nil, 'binary chunks are not allowed'
  end
  local f, err = raw_loadstring(s, name)
  if f then raw_setfenv(f, raw_getfenv(2)) end
  return f, err
end
G.load = nil

-- What luaPushErrorBuff makes of a message: "CODE msg" (ERR when there is no code).
local function error_table(message)
  local code, rest = message:match('^%-(%S+) (.*)$')
  if not code then
    rest = message:match('^%-(.*)$')
    if rest then code = 'ERR' else code, rest = 'ERR', message end
  end
  rest = rest:gsub('^[\r\n]+', ''):gsub('[\r\n]+$', '')
  return {err = code .. ' ' .. rest}
end

-- lupa hands a Python callable at most about 7,997 arguments (its checks of the C
-- stack meet Lua's 8,000-slot limit), and Redis' scripts may pass more
-- (`redis.call('lpush', 'l', unpack(a))` with 7,999 values): past DIRECT_ARGS_MAX
-- the arguments travel in one table. Scripts are compiled without tail calls
-- (boot.compile), so `return redis.call(...)` keeps the script's frame and line.
local DIRECT_ARGS_MAX = 7000
local py_call, py_pcall, py_call_packed = py.call, py.pcall, py.call_packed
local api = {}
api.call = function(...)
  local n = select('#', ...)
  if n <= DIRECT_ARGS_MAX then return py_call(...) end
  return py_call_packed(true, n, {...})
end
api.pcall = function(...)
  local n = select('#', ...)
  if n <= DIRECT_ARGS_MAX then return py_pcall(...) end
  return py_call_packed(false, n, {...})
end
api.sha1hex = py.sha1hex
api.error_reply = function(...)
  local e = ...
  if select('#', ...) ~= 1 or type(e) ~= 'string' then
    return error_table('wrong number or type of arguments')
  end
  if e:sub(1, 1) ~= '-' then e = '-' .. e end
  return error_table(e)
end
api.status_reply = function(...)
  local s = ...
  if select('#', ...) ~= 1 or type(s) ~= 'string' then
    return error_table('wrong number or type of arguments')
  end
  return {ok = s}
end
-- Python callables (C functions to Lua): an error they raise names the script's line.
api.log, api.setresp, api.set_repl = py.log, py.setresp, py.set_repl
api.replicate_commands = function() return true end
api.breakpoint = function() return false end
api.debug = function() end
api.acl_check_cmd = py.acl_check_cmd
api.LOG_DEBUG, api.LOG_VERBOSE, api.LOG_NOTICE, api.LOG_WARNING = 0, 1, 2, 3
api.REPL_NONE, api.REPL_AOF, api.REPL_SLAVE, api.REPL_REPLICA, api.REPL_ALL = 0, 1, 2, 2, 3
api.REDIS_VERSION, api.REDIS_VERSION_NUM = py.version, py.version_num

-- redis.register_function's argument rules (function_lua.c), then Python records it.
local function register_function(...)
  local n = select('#', ...)
  if n < 1 or n > 2 then error(error_table('wrong number of arguments to redis.register_function'), 0) end
  local name, callback, flags, description
  if n == 2 then
    name, callback = ...
    if type(name) ~= 'string' and type(name) ~= 'number' then
      error(error_table('first argument to redis.register_function must be a string'), 0)
    end
    if type(callback) ~= 'function' then
      error(error_table('second argument to redis.register_function must be a function'), 0)
    end
  else
    local args = ...
    if type(args) ~= 'table' then
      error(error_table('calling redis.register_function with a single argument is only applicable to ' ..
                        'Lua table (representing named arguments).'), 0)
    end
    for k, v in pairs(args) do
      if type(k) ~= 'string' then
        error(error_table('named argument key given to redis.register_function is not a string'), 0)
      elseif k == 'function_name' then
        if type(v) ~= 'string' and type(v) ~= 'number' then
          error(error_table('function_name argument given to redis.register_function must be a string'), 0)
        end
        name = v
      elseif k == 'description' then
        if type(v) ~= 'string' and type(v) ~= 'number' then
          error(error_table('description argument given to redis.register_function must be a string'), 0)
        end
        description = v
      elseif k == 'callback' then
        if type(v) ~= 'function' then
          error(error_table('callback argument given to redis.register_function must be a function'), 0)
        end
        callback = v
      elseif k == 'flags' then
        if type(v) ~= 'table' then
          error(error_table('flags argument to redis.register_function must be a table representing ' ..
                            'function flags'), 0)
        end
        flags = {}
        local i = 1
        while v[i] ~= nil do
          if type(v[i]) ~= 'string' and type(v[i]) ~= 'number' then error(error_table('unknown flag given'), 0) end
          flags[i] = tostring(v[i])
          i = i + 1
        end
      else
        error(error_table('unknown argument given to redis.register_function'), 0)
      end
    end
    if not name then error(error_table('redis.register_function must get a function name argument'), 0) end
    if not callback then error(error_table('redis.register_function must get a callback argument'), 0) end
  end
  py.register_function(tostring(name), callback, flags or {}, description and tostring(description))
end

-- What a library sees while FUNCTION LOAD runs its code: `redis` alone, and in it
-- only what registers functions; anything else is a missing global.
local function strict_readonly(t)
  local proxy = raw_setmetatable({}, protect_meta({
    __index = function(_, k)
      local v = t[k]
      if v == nil then
        error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
      end
      return v
    end,
    __newindex = readonly_error,
  }))
  readonly_tables[proxy] = true
  return proxy
end
local load_api = {
  register_function = register_function,
  log = py.log,
  LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
  REDIS_VERSION = py.version, REDIS_VERSION_NUM = py.version_num,
}

for _, name in ipairs({'io', 'os', 'package', 'require', 'module', 'loadfile', 'dofile', 'print',
                       'debug', 'newproxy'}) do
  G[name] = nil
end
for name, lib in pairs(py.libraries) do G[name] = lib end
for _, name in ipairs({'string', 'math', 'table', 'coroutine', 'cjson', 'bit', 'cmsgpack', 'struct'}) do
  if G[name] then G[name] = readonly(G[name]) end
end
G.redis = readonly(api)
local readonly_load_api = strict_readonly(load_api)

-- Globals: reads of missing names and every write fail, as in Redis.
local eval_vars = {}
local function make_env(lookup)
  local env = {}
  raw_setmetatable(env, protect_meta({
    __index = function(_, k)
      if k == '_G' then return env end
      local v = lookup(k)
      if v == nil then
        error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
      end
      return v
    end,
    __newindex = readonly_error,
  }))
  readonly_tables[env] = true
  return env
end
local eval_env = make_env(function(k)
  local v = eval_vars[k]
  if v ~= nil then return v end
  return G[k]
end)
local function_loading = false
local function_env = make_env(function(k)
  if function_loading then
    if k == 'redis' then return readonly_load_api end
    return nil
  end
  return G[k]
end)

-- Redis' __redis__err__handler: a table error gains the script's source and line.
local function handler(err)
  local level, info = 2, nil
  while true do
    info = getinfo(level, 'Sl')
    if not info or (info.what ~= 'C' and info.source ~= '=durakv') then break end
    level = level + 1
  end
  if type(err) == 'userdata' and info then
    -- A library's error (luaL_error in Redis' C libraries) names its Lua caller's position.
    local message = unwrap(err)
    if type(message) == 'string' then err = info.short_src .. ':' .. info.currentline .. ': ' .. message end
  end
  err = error_value(err)
  if type(err) ~= 'table' then err = {err = 'ERR ' .. tostring(err)} end
  if info then
    err.source = info.source
    err.line = info.currentline
  end
  return err
end

-- Every BUSY_HOOK_INSTRUCTIONS instructions Python may serve other requests
-- (busy-reply-threshold) and say the script was killed (SCRIPT KILL); from then on
-- the hook fires on every line, so a pcall in the script cannot swallow the kill.
local BUSY_HOOK_INSTRUCTIONS = 100000
local killed_message = 'Script killed by user with SCRIPT KILL...'
-- The kill is raised in the script's own code only (never inside this sandbox's
-- functions, such as the error handler); a count that lands here tries again on
-- the next line.
local function busy_hook()
  if py.tick() then
    sethook(busy_hook, 'l')
    local info = getinfo(2, 'S')
    if info and info.source ~= '=durakv' then error(error_table(killed_message), 0) end
  end
end
local function guarded(f)
  sethook(busy_hook, '', BUSY_HOOK_INSTRUCTIONS)
  local ok, r = xpcall(f, handler)
  sethook()
  return ok, r
end

local boot = {}
function boot.compile(body, chunkname, for_function)
  local f, err = raw_loadstring(body, chunkname)
  if not f then return nil, err end
  f = raw_loadstring(py.without_tail_calls(string_dump(f)), chunkname)
  raw_setfenv(f, for_function and function_env or eval_env)
  return f
end
function boot.run_eval(f, keys, args)
  eval_vars.KEYS, eval_vars.ARGV = keys, args
  local ok, r = guarded(f)
  eval_vars.KEYS, eval_vars.ARGV = nil, nil
  return ok, r
end
function boot.run_function(f, keys, args)
  return guarded(function() return f(keys, args) end)
end
-- FUNCTION LOAD runs a library's code for at most LOAD_TIMEOUT (Python keeps the clock).
local function load_hook()
  if py.load_expired() then
    sethook(load_hook, 'l')
    local info = getinfo(2, 'S')
    if info and info.source ~= '=durakv' then error(error_table('FUNCTION LOAD timeout'), 0) end
  end
end
function boot.load_library(f)
  function_loading = true
  sethook(load_hook, '', BUSY_HOOK_INSTRUCTIONS)
  local ok, r = xpcall(f, handler)
  sethook()
  function_loading = false
  return ok, r
end
function boot.rawget(t, k) return rawget(t, k) end
function boot.is_table(t) return type(t) == 'table' end
function boot.next(t, k) return next(t, k) end
return boot
