"""Run a `LoadSpec` with wrk: generate its Lua script, run wrk, parse the result.

wrk runs with one thread (the pools of dynamic requests live in one Lua state)
and reports through `done()` one `BENCH_RESULT {json}` line, with the non-2xx
count taken from `response()` (wrk itself only counts status >= 400).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson

from bench.spec import LoadSpec, RunResult

RESULT_MARKER = "BENCH_RESULT "

COMMON_LUA = r"""
non2xx = 0
statuses = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function copy_headers()
  local copy = {}
  for name, value in pairs(wrk.headers) do copy[name] = value end
  return copy
end

local function header(headers, name)
  for key, value in pairs(headers) do
    if string.lower(key) == name then return value end
  end
  return nil
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif on_success then
    on_success(headers, body)
  end
end

function done(summary, latency, requests)
  local bad, merged, parts = 0, {}, {}
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    for code, count in pairs(thread:get("statuses") or {}) do
      merged[code] = (merged[code] or 0) + count
    end
  end
  for code, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%d":%d', code, count)
  end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,'
      .. '"non_2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,'
      .. '"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50.0),
    latency:percentile(99.0), bad, e.connect, e.read, e.write, e.timeout,
    table.concat(parts, ",")))
end
"""

ROTATE_LUA = r"""
local index = 0
function request()
  index = index % #BODIES + 1
  return wrk.format(nil, nil, nil, BODIES[index])
end
"""

PATCH_POOL_LUA = r"""
local counter = 0
function request()
  counter = counter + 1
  local headers = copy_headers()
  local item = table.remove(POOL, 1)
  if item == nil then  -- pool exhausted by earlier failures: fails visibly
    return wrk.format(nil, (string.gsub(wrk.path, "{id}", "0")), headers, "{}")
  end
  headers["If-Match"] = item[2]
  local path = string.gsub(wrk.path, "{id}", item[1])
  local body = string.gsub(wrk.body, "{n}", tostring(counter))
  return wrk.format(nil, path, headers, body)
end

function on_success(headers, body)
  local id = string.match(body, '"id":%s*(%d+)')
  local etag = header(headers, "etag")
  if id and etag then table.insert(POOL, {id, etag}) end
end
"""

REFRESH_POOL_LUA = r"""
function request()
  local token = table.remove(TOKENS, 1) or "pool-exhausted"
  return wrk.format(nil, nil, nil, (string.gsub(wrk.body, "{token}", token)))
end

function on_success(headers, body)
  local token = string.match(body, '"refresh_token":%s*"([^"]+)"')
  if token then table.insert(TOKENS, token) end
end
"""


def lua_string(value: str) -> str:
    """A Lua string literal for `value`."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def _lua_list(values: list[str]) -> str:
    return "{" + ",".join(lua_string(value) for value in values) + "}"


def lua_script(spec: LoadSpec) -> str:
    """The wrk script that sends `spec`'s requests and reports as JSON."""
    lines = [
        f"wrk.method = {lua_string(spec.method)}",
        f"wrk.path = {lua_string(spec.path)}",
    ]
    if spec.body is not None:
        lines.append(f"wrk.body = {lua_string(spec.body)}")
    lines += [
        f"wrk.headers[{lua_string(name)}] = {lua_string(value)}"
        for name, value in spec.headers.items()
    ]
    lines.append(COMMON_LUA)
    if spec.kind == "rotate":
        lines += [f"BODIES = {_lua_list(spec.bodies)}", ROTATE_LUA]
    elif spec.kind == "patch_pool":
        pool = ",".join(
            "{" + lua_string(str(item_id)) + "," + lua_string(str(etag)) + "}"
            for item_id, etag in spec.items
        )
        lines += [f"POOL = {{{pool}}}", PATCH_POOL_LUA]
    elif spec.kind == "refresh_pool":
        lines += [f"TOKENS = {_lua_list(spec.tokens)}", REFRESH_POOL_LUA]
    return "\n".join(lines) + "\n"


def wrk_path() -> str | None:
    """The wrk executable, or None when it is not installed."""
    return shutil.which("wrk")


def wrk_version(executable: str) -> str:
    """wrk's version line, e.g. `wrk debian/4.1.0-3+b2 [epoll]`."""
    completed = subprocess.run(  # noqa: S603 - our own argv
        [executable, "--version"], capture_output=True, text=True, check=False
    )
    first = (completed.stdout or completed.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk (unknown version)"


def parse_output(output: str) -> RunResult:
    """The `RunResult` in wrk's output (from the script's `done()`).

    Raises:
        RuntimeError: The output has no result line (wrk failed).
    """
    for line in output.splitlines():
        if line.startswith(RESULT_MARKER):
            data = orjson.loads(line[len(RESULT_MARKER) :])
            return RunResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                non_2xx=data["non_2xx"],
                statuses=data["statuses"],
                socket_errors={
                    name: data[name]
                    for name in ("connect", "read", "write", "timeout")
                    if data[name]
                },
            )
    raise RuntimeError(f"wrk produced no result:\n{output}")


def run(executable: str, spec: LoadSpec, script_path: Path) -> RunResult:
    """Run `spec` with wrk (1 thread, `spec.connections` connections).

    Args:
        executable: Path of wrk.
        spec: The run; `duration` and `timeout` are rounded up to whole seconds.
        script_path: Where to write the generated Lua script.

    Returns:
        What wrk measured.
    """
    script_path.write_text(lua_script(spec), encoding="utf-8")
    argv = [
        executable,
        "-t1",
        f"-c{spec.connections}",
        f"-d{max(1, round(spec.duration))}s",
        f"--timeout={max(1, round(spec.timeout))}s",
        "-s",
        str(script_path),
        spec.base_url,
    ]
    completed = subprocess.run(  # noqa: S603 - our own argv
        argv, capture_output=True, text=True, check=False
    )
    return parse_output(completed.stdout + completed.stderr)
