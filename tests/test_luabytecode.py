"""shards/luabytecode.py: compiled scripts lose their tail calls and nothing else."""

from __future__ import annotations

import pytest

from durakv.shards.luabytecode import BytecodeError, without_tail_calls
from durakv.shards.luaenv import Scripting


@pytest.fixture(scope="module")
def lua() -> Scripting:
    return Scripting()


def run(lua: Scripting, body: bytes, *args):
    function = lua.boot["compile"](body, b"@user_script", False)
    return lua.runtime.eval("function(f, ...) return {pcall(f, ...)} end")(function, *args)


def test_returned_calls_give_every_value_and_keep_the_frame(lua):
    body = (b"local function many(...) return select('#', ...), ... end\n"
            b"local function outer(...) return many(...) end\n"
            b"return outer(...)")
    result = run(lua, body, 1, 2, 3)
    assert [result[i] for i in range(1, 6)] == [True, 3, 1, 2, 3]
    # Each returned call keeps its caller's frame now: deep tail recursion, which plain
    # Lua runs in constant space, meets the call-depth limit (COMPATIBILITY.md).
    recursion = b"local function down(n) if n == 0 then return 'done' end return down(n - 1) end\nreturn down(...)"
    assert [run(lua, recursion, 1000)[i] for i in (1, 2)] == [True, b"done"]
    assert [run(lua, recursion, 100000)[i] for i in (1, 2)] == [False, b"user_script:1: stack overflow"]


def test_the_chunk_format_is_checked(lua):
    dumped = lua.runtime.eval("string.dump(loadstring('return 1'))")
    assert without_tail_calls(dumped) == dumped  # nothing to change
    with pytest.raises(BytecodeError):
        without_tail_calls(b"\x1bLuaR" + dumped[5:])
    with pytest.raises(BytecodeError):
        without_tail_calls(dumped + b"\x00")
