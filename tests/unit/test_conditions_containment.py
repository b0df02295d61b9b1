"""Containment of hostile conditions: what used to crash or stall the worker now fails one message.

Every dangerous pattern runs in a child process, so that if containment regresses the child
dies (or hangs until the subprocess timeout) and the test fails, instead of the crash taking
pytest down with it. No test measures time: a pattern is contained when the child exits
normally and the evaluation reported a ConditionError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import quickjs

from streams.conditions import _REMOVED_GLOBALS, _sandbox, compile_condition
from streams.errors import ConditionError

ROOT = Path(__file__).resolve().parents[2]

# The child compiles the condition, evaluates it once on a message that triggers it, then once
# on a harmless one (the context must still work, or have been replaced), and prints both.
CHILD = """
import json, sys
from streams.conditions import compile_condition
from streams.errors import ConditionError

source, time_limit_ms = json.loads(sys.argv[1])
condition = compile_condition(source, time_limit_ms=time_limit_ms)
outcome = {}
try:
    outcome["result"] = condition.evaluate({"go": True}, {})
except ConditionError as exc:
    outcome["error"] = str(exc)
outcome["after"] = condition.evaluate({"go": False}, {})
print(json.dumps(outcome))
"""


def run_contained(source: str, time_limit_ms: int = 100) -> dict[str, object]:
    """Evaluate `source` in a child; fail if the child crashed or hung."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps([source, time_limit_ms])],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the condition stalled the process: {source}")
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    outcome: dict[str, object] = json.loads(done.stdout)
    assert outcome["after"] is True, outcome  # the condition still works for other messages
    return outcome


# (what it is, the condition, what the error says). Each `$.go ? ... : true`, so that the
# harmless message afterwards is true. Before containment each one crashed (SIGSEGV) or ran for
# minutes to forever in one call into QuickJS, past the time limit.
DANGEROUS = [
    (
        "JSON.stringify of deep nesting (was a C stack overflow, SIGSEGV)",
        "if ($.go) { var o = []; for (var i = 0; i < 60000; i++) o = [o]; JSON.stringify(o) }"
        " else true",
        "InternalError: stack overflow",
    ),
    (
        "JSON.stringify of deep objects with a property list",
        "if ($.go) { var o = {}; for (var i = 0; i < 60000; i++) o = {a: o};"
        " JSON.stringify(o, ['a']) } else true",
        "InternalError: stack overflow",
    ),
    (
        "join over a billion holes",
        "$.go ? Array(1e9).join('') : true",
        "RangeError: Array.prototype.join over a length of 1000000000",
    ),
    (
        "implicit join of a sparse array",
        "$.go ? `${Array(2 ** 32 - 1)}` : true",
        "RangeError: Array.prototype.join over a length of 4294967295",
    ),
    (
        "indexOf over an array-like of 2**53 - 1",
        "$.go ? Array.prototype.indexOf.call({length: 2 ** 53 - 1}, 1) : true",
        "RangeError: Array.prototype.indexOf over a length of 9007199254740991",
    ),
    (
        "sort of a sparse array",
        "if ($.go) { var a = [3, 1]; a.length = 2 ** 32 - 1; a.sort() } else true",
        "RangeError: Array.prototype.sort over a length of 4294967295",
    ),
    (
        "forEach over holes",
        "$.go ? Array(2 ** 32 - 1).forEach(function () {}) : true",
        "RangeError: Array.prototype.forEach over a length of 4294967295",
    ),
    (
        "a length that grows once the check is passed",
        "if ($.go) { var a = [1]; Object.defineProperty(Array.prototype, 0, {configurable: true,"
        " get: function () { b.length = 2 ** 32 - 1; return 1 }}); var b = [];"
        " [, 2].concat(b).length } else true",
        "timed out after 100 ms",
    ),
    (
        "concat of a huge spreadable array-like",
        "if ($.go) { var o = {length: 2 ** 32}; o[Symbol.isConcatSpreadable] = true;"
        " [].concat(o) } else true",
        "timed out after 100 ms",
    ),
    (
        "flat of a nested sparse array",
        "$.go ? [Array(2 ** 32 - 1)].flat() : true",
        "timed out after 100 ms",
    ),
    (
        "quadratic indexOf",
        "$.go ? 'a'.repeat(4e6).indexOf('a'.repeat(2e6) + 'b') : true",
        "RangeError: String.prototype.indexOf of 2000001 characters in 4000000",
    ),
    (
        "quadratic split",
        "$.go ? 'a'.repeat(4e6).split('a'.repeat(2e6) + 'b') : true",
        "RangeError: String.prototype.split of 2000001 characters in 4000000",
    ),
    (
        "quadratic replace with a pattern that converts itself",
        "$.go ? 'a'.repeat(4e6).replace({toString() { return 'a'.repeat(2e6) + 'b' }}, '') : true",
        "RangeError: String.prototype.replace of 2000001 characters in 4000000",
    ),
    (
        "eval of a huge generated scope (compiling is quadratic and never interrupted)",
        "$.go ? eval('var ' + Array.from({length: 2e5}, function (_, i) { return 'a' + i })"
        ".join(',')) : true",
        "RangeError: eval of ",
    ),
    (
        "the Function constructor, reached through a prototype",
        "$.go ? (function () {}).constructor('var ' + 'a,'.repeat(1e5) + 'b') : true",
        "RangeError: Function of 200005 characters",
    ),
    (
        "the GeneratorFunction constructor",
        "$.go ? Object.getPrototypeOf(function* () {}).constructor('x'.repeat(1e5)) : true",
        "RangeError: GeneratorFunction of 100000 characters",
    ),
    (
        "nested eval in a script condition (whose own eval must stay out of reach)",
        "var big = 'var ' + 'a,'.repeat(1e5) + 'b'; $.go ? eval(big) : true",
        "RangeError: eval of 200005 characters",
    ),
    (
        "the script's scope object, taken from arguments",
        "var scope = arguments[3]; var get = Object.getOwnPropertyDescriptor(scope, 'eval').get;"
        " $.go ? get()('x'.repeat(1e5)) : true",
        "RangeError: eval of 100000 characters",
    ),
    (
        "a typed array named dynamically",
        "$.go ? new globalThis['Uint8' + 'Array'](1e9) : true",
        "TypeError: not a function",
    ),
    (
        "Atomics named dynamically",
        "$.go ? globalThis['Atom' + 'ics'].wait : true",
        "TypeError: cannot read property 'wait' of undefined",
    ),
    (
        "deep recursion",
        "function f(n) { return f(n + 1) + 1 } $.go ? f(0) : true",
        "InternalError: stack overflow",
    ),
    (
        "an infinite loop",
        "if ($.go) { for (;;) {} } else true",
        "timed out after 100 ms",
    ),
    (
        "a string past the memory limit",
        "$.go ? 'x'.repeat(2 ** 28) : true",
        "exceeded its memory limit",
    ),
]


@pytest.mark.parametrize(
    ("source", "error"),
    [(source, error) for _, source, error in DANGEROUS],
    ids=[d[0] for d in DANGEROUS],
)
def test_dangerous_pattern_fails_one_message(source: str, error: str) -> None:
    outcome = run_contained(source)
    assert "result" not in outcome, outcome
    assert error in str(outcome["error"]), outcome


# --- refused at configuration time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("new Uint8Array(1e9)", "Uint8Array"),
        (
            "var b = new SharedArrayBuffer(8); Atomics.wait(new Int32Array(b), 0, 0)",
            "SharedArrayBuffer",
        ),
        ("new Proxy({}, {}).x", "Proxy"),
        ("$.x instanceof ArrayBuffer", "ArrayBuffer"),
        ("({ Proxy })", "Proxy"),
    ],
)
def test_removed_globals_are_refused_at_configuration_time(source: str, name: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(source)
    assert str(caught.value) == (
        f"condition uses {name}, which conditions cannot use (their sandbox has no typed arrays,"
        " ArrayBuffer, SharedArrayBuffer, DataView, Atomics or Proxy)"
    )


@pytest.mark.parametrize(
    "source",
    [
        "$.Proxy == 'DataView'",  # a property and a string
        "({Uint8Array: 1}).Uint8Array == 1",  # a key
        "// Atomics\n/* Proxy */ true",  # comments
    ],
)
def test_the_names_as_properties_strings_or_comments_are_fine(source: str) -> None:
    assert compile_condition(source).evaluate({"Proxy": "DataView"}, {}) is True


def test_a_source_longer_than_the_cap_is_refused() -> None:
    source = "true || " + "1 + " * 20000 + "1"
    with pytest.raises(ConditionError) as caught:
        compile_condition(source)
    assert str(caught.value) == (
        f"condition is {len(source)} characters long; conditions may be at most 65536"
    )


# --- the sandbox takes nothing away that conditions use -----------------------------------------


def test_removed_and_original_built_ins_are_unreachable() -> None:
    """Nothing reachable from the global object or from what syntax creates (literals,
    functions of every kind, iterators, arguments) is a removed built-in or one of the originals
    the guards wrap: user code cannot get them back through a prototype or a constructor."""
    context = quickjs.Context()
    names = [name for name in _REMOVED_GLOBALS if name != "Atomics"]
    capture = "".join(f"s.push({name}, {name}.prototype);" for name in names)
    context.eval(
        "globalThis.__kept = (function () { var s = [Atomics, Object.getPrototypeOf(Int8Array),"
        " Object.getPrototypeOf(Int8Array.prototype)];" + capture + " var o = [eval, Function,"
        " JSON.stringify, Array.prototype.join, Array.prototype.concat, String.prototype.split,"
        " Object.getPrototypeOf(function* () {}).constructor];"
        " return function (x) { return s.indexOf(x) >= 0 || o.indexOf(x) >= 0 } })()"
    )
    kept = context.eval("(function () { var k = __kept; delete globalThis.__kept; return k })()")
    _sandbox(context, 1000, 16 * 1024 * 1024)
    walk = context.eval(
        r"""
(function (kept) {
  var queue = [globalThis, [], {}, function () {}, function* () {}, async function () {},
    async function* () {}, (function* () {})(), (async function* () {})(), () => 1, /a/g,
    new Map(), new Set(), new WeakMap(), new WeakSet(), new Map().entries(), new Set().values(),
    [][Symbol.iterator](), ''[Symbol.iterator](), 'a'.matchAll(/a/g), Promise.resolve(),
    new Error(), new Date(), Object(Symbol()), Object(1n), new Number(1), new String(''),
    new Boolean(false), (function () { return arguments })(),
    (function () { 'use strict'; return arguments })(), function () {}.bind(null), class {}];
  var seen = new Set(), found = [];
  while (queue.length) {
    var o = queue.pop();
    if (o === null || (typeof o !== 'object' && typeof o !== 'function') || seen.has(o)) continue;
    seen.add(o);
    if (kept(o)) found.push(String(o.name || o[Symbol.toStringTag] || o));
    queue.push(Object.getPrototypeOf(o));
    Reflect.ownKeys(o).forEach(function (key) {
      var d = Object.getOwnPropertyDescriptor(o, key);
      if (d) queue.push(d.value, d.get, d.set);
    });
  }
  return JSON.stringify([seen.size, found]);
})
"""
    )
    seen, found = json.loads(walk(kept))
    assert found == []
    assert seen > 300  # the walk did go through the built-ins


# Each is evaluated in a plain QuickJS context and in a hardened one; they must agree.
SAME_RESULT = [
    "JSON.stringify({a: 1, b: [1, 2, {c: 3}], d: undefined, e: function () {}, f: Symbol()})",
    "JSON.stringify({a: 1, b: 2, c: {a: 5, z: 6}}, ['a', 'c'])",
    "JSON.stringify({a: new Number(5), b: [{a: 2, b: 3}]}, ['b', 'a', new String('a')])",
    "JSON.stringify({a: 1, b: 'x'}, function (k, v) { return typeof v === 'number' ? v * 2 : v })",
    "JSON.stringify({a: {toJSON() { return {x: 1} }}}, null, 2)",
    "JSON.stringify([new Number(3), new String('s'), new Boolean(false), new Date(0)])",
    "(function () { try { var o = {}; o.o = o; JSON.stringify(o) }"
    " catch (e) { return e.name } })()",
    "JSON.stringify.length + JSON.stringify.name",
    "[1, 2].concat([3, [4]], 5, {length: 1, 0: 'x'}).join('|')",
    "(function () { var o = {length: 2, 0: 'a', 1: 'b'}; o[Symbol.isConcatSpreadable] = true;"
    " return [0].concat(o).join('|') })()",
    "(function () { var r = [1, , 3].concat([, 5]); return r.length + ':' + (1 in r) })()",
    "(function () { class A extends Array {} var r = A.of(1).concat([2]);"
    " return (r instanceof A) + ':' + r.length })()",
    "[1, [2, [3, [4]]]].flat().join('|') + [1, [2, [3, [4]]]].flat(Infinity).join('|')",
    "[[1, , 2], , [3]].flat().length + ':'"
    " + [1, 2].flatMap(function (x) { return [x, [x]] }).length",
    "[3, 1, 2, 10, undefined, , 'b', 'a'].sort().join('|')",
    "[3, 1, 2, 10].sort(function (a, b) { return a - b }).join('|')",
    "(function () { try { [1].sort(1) } catch (e) { return e.name } })()",
    "[1, 2, 3].indexOf(2) + [1, 2, 3].lastIndexOf(3) + [1, 2, 3].includes(2) + [1, 2, 3].slice(1)",
    "Array.prototype.map.call('abc', function (c) { return c + c }).join()",
    "(function () { return Array.prototype.slice.call(arguments, 1).join() })(1, 2, 3)",
    "Array.prototype.join.call({length: '2', 0: 'a', 1: 'b'})",
    "[].indexOf.length + [].indexOf.name + [].concat.length + [].flat.length + [].sort.length",
    "'abcabc'.indexOf('c', 3) + ':' + 'abcabc'.lastIndexOf('a', 2) + ':' + 'abc'.includes('b', 2)",
    "'abc'.indexOf() + ':' + 'undefined'.indexOf() + ':' + 'abc'.lastIndexOf('c', undefined)",
    "(function () { try { 'abc'.includes(/b/) } catch (e) { return e.name } })()",
    "'a,b,,c'.split(',').length + 'a,b,c'.split(',', 2).join('|') + 'abc'.split().length"
    " + 'a1b2c'.split(/\\d/).join('|') + 'anullb'.split(null).join('|')",
    "'aXbXc'.replace('X', '-') + 'aXbXc'.replace(/X/g, '-') + 'aXbXc'.replace('X', function (m, i)"
    " { return i }) + 'abc'.replace('b', '$&$&') + 'undefined'.replace(undefined, 'x')",
    "'aXbXc'.replaceAll('X', '-') + 'aXbXc'.replaceAll(/X/g, '+')",
    "(function () { try { 'aXb'.replaceAll(/X/, '-') } catch (e) { return e.name } })()",
    "'abc'.split({ [Symbol.split](s, l) { return s + l } }, 3)",
    "Function('a', 'b', 'return a + b')(1, 2) + new Function('return 7')() + Function.name",
    "(function () { var f = function () {}; return (f instanceof Function) + ':'"
    " + (f.constructor === Function) + ':' + Function.length })()",
    "(function () { var G = Object.getPrototypeOf(function* () {}).constructor;"
    " return [...G('yield 1; yield 2')()].join() + G.name })()",
    "(function () { class F extends Function {} var f = new F('return 3');"
    " return f() + ':' + (f instanceof F) })()",
    "eval('1 + 2') + ':' + eval(5) + ':' + eval.name",
]


@pytest.mark.parametrize("expression", SAME_RESULT)
def test_guarded_built_ins_behave_as_before(expression: str) -> None:
    plain = quickjs.Context()
    hardened = quickjs.Context()
    _sandbox(hardened, 1000, 16 * 1024 * 1024)
    assert hardened.eval(expression) == plain.eval(expression)


def test_eval_in_a_condition_is_indirect() -> None:
    condition = compile_condition("eval('typeof $') == 'undefined' && eval('1 + 1') == 2")
    assert condition.evaluate({}, {}) is True


def test_a_script_condition_still_sees_its_bindings() -> None:
    condition = compile_condition("var n = $.n * 2; let m = _kafka.partition; n + m > 4")
    assert condition.evaluate({"n": 2}, {"partition": 1}) is True
    assert condition.evaluate({"n": 1}, {"partition": 1}) is False
