"""Event-handler conditions: Conductor's evaluators, sandboxed in QuickJS.

A Conductor handler's `condition` decides whether its actions run for a message. Users bring
conditions written for Conductor (`$.type == 'ALARM' && $.severity > 2`), so Herald keeps its
semantics:

- `javascript` (and its alias `graaljs`): an ECMAScript expression, or a script whose last
  expression's value is the result, with the message bound to `$` and the record's metadata to
  `_kafka` (`streams.message.META_NAME`);
- `value-param`: the expression names a field of the message (or a path, see
  `compile_condition`) whose value is the result;
- the result goes through Conductor's truthiness (`truthy`), not JavaScript's;
- an empty or missing condition is true.

Conditions are user code running inside the consumer, so they run in QuickJS with nothing but
the ECMAScript built-ins (no host functions, no module loader, no pending jobs run), with a time
limit (an infinite loop is stopped) and a memory limit. Each Condition owns one QuickJS context,
reused across messages for speed and recreated after a timeout or memory failure, which can
leave QuickJS in a state it should not be used from again. Contexts are not thread-safe: use a
Condition from one thread.

Handler authors are less trusted than the operator, so before any of their code runs each
context is hardened (`_SANDBOX_JS`) against what QuickJS (2021-03-27, inside quickjs 1.19.4)
does not stop by itself. Its time limit is checked only between bytecode instructions and at
calls, so one long call into a built-in ran on past it, and some built-ins crash:

- typed arrays, `ArrayBuffer`, `SharedArrayBuffer`, `DataView`, `Atomics` and `Proxy` are
  removed (nothing left reachable hands them back), and a source naming them is refused at
  configuration time (`_REMOVED_GLOBALS`);
- `JSON.stringify` always runs with a replacer, so nesting deep enough to overflow the C stack
  (a segfault from about 50,000 levels) meets QuickJS's stack check instead ("stack overflow",
  from about 1,000 levels);
- the Array methods that walk `length` in C, holes included (`Array(1e9).join()`, `indexOf` on
  `{length: 2**53 - 1}`), refuse a length beyond what the memory limit could hold densely;
  `concat`, `flat` and `flatMap` are written in JavaScript, where the time limit applies, and
  `sort` compares in JavaScript;
- the naive string searches (`indexOf`, `lastIndexOf`, `includes`, `split`, `replace`,
  `replaceAll`: up to (n - m + 1) * m comparisons) refuse one whose worst case is beyond what
  the time limit allows;
- the condition and any code compiled at run time (`eval`, `Function` and its generator and
  async kin) are at most `_MAX_SOURCE_CHARS` long: compiling, never interrupted, is quadratic
  in the declarations of a scope. `eval` inside a condition is therefore an indirect eval;
- QuickJS's stack is capped at `_STACK_BYTES`, far within the thread's.

Meeting one of these fails that message with a ConditionError, as a throw does. What one call
into a built-in may still do without interruption is bounded by the memory limit, no longer by
a length or a product the condition picks: at the 16 MiB default, joining the largest array of
numbers that fits takes a few hundred milliseconds.
Two things are not contained in-process: regular expressions run without the time limit
(`/^(a+)+$/` on 40 characters runs for hours), and QuickJS can crash on its out-of-memory path
(a use-after-free of the out-of-memory error while adding its backtrace, e.g.
`for (;;) a.push(new Array(100).fill(1))`, depending on the limit and the heap). So a worker
runs these conditions in its evaluator process (`streams.evaluator`, `ConditionJob`), which it
kills at a deadline and replaces after a crash (`agents.evaluator_process`).

Conductor expands inline JSON (`expand_inline_json`) in the payload before every condition;
that is the caller's step, so `evaluate` sees exactly the message it is given.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import quickjs

from streams.errors import ConditionError, TemplateError
from streams.message import META_NAME
from streams.native_conditions import compile_native
from streams.templating import JsonPath, compile_path, to_json

__all__ = [
    "EVALUATOR_TYPES",
    "Condition",
    "ConditionJob",
    "ConditionSpec",
    "compile_condition",
    "truthy",
]

EVALUATOR_TYPES = frozenset({"javascript", "graaljs", "value-param"})

# What the sandbox takes away from conditions: they work on JSON, and these are either binary
# buffers (where QuickJS's out-of-memory and bounds bugs cluster, and whose C loops are sized by
# memory, not the time limit) or Proxy, which would let any object run code in the middle of a
# built-in and so defeat the guards below. A source naming one is refused at configuration time.
_REMOVED_GLOBALS = (
    "ArrayBuffer",
    "SharedArrayBuffer",
    "DataView",
    "Atomics",
    "Int8Array",
    "Uint8Array",
    "Uint8ClampedArray",
    "Int16Array",
    "Uint16Array",
    "Int32Array",
    "Uint32Array",
    "BigInt64Array",
    "BigUint64Array",
    "Float32Array",
    "Float64Array",
    "Proxy",
)
# The longest source a condition may have, and that `eval` or `Function` may compile at run
# time: QuickJS's compiler is quadratic in the declarations of one scope (200,000 `var`s take
# 6 s, and compiling is never interrupted); 64 KiB compiles in tens of milliseconds at worst.
_MAX_SOURCE_CHARS = 64 * 1024
# QuickJS's own stack limit (its default, set explicitly): deep recursion is "stack overflow"
# long before the thread's C stack (8 MiB for the main thread) runs out.
_STACK_BYTES = 256 * 1024
# A QuickJS value is 16 bytes, so no dense array of more elements than the memory limit over 16
# can exist: the Array methods refuse to walk a longer length (walking 10 million holes in C
# takes 0.1-0.2 s, and up to 2**53 - 1 can be asked for).
_VALUE_BYTES = 16
# Character comparisons a string search may need at worst, per millisecond of the time limit
# (QuickJS compares 2-4 million characters a millisecond, on a loaded machine the fewer).
_SEARCH_STEPS_PER_MS = 1 << 21

# Hardens a fresh context before any user code runs (see the module's docstring), and returns
# the originals the factory needs. Every guard reads only what the built-in it protects will
# read, through functions captured here, and with Proxy gone reading a property descriptor runs
# no user code: nothing can change between the guard's check and the built-in's own reading.
_SANDBOX_JS = r"""
(function (removed, lengthCap, searchCap, sourceCap) {
  'use strict';
  var G = globalThis, Obj = Object, Arr = Array, Str = String;
  var TypeErr = TypeError, RangeErr = RangeError;
  var apply = Reflect.apply, construct = Reflect.construct;
  var defineProperty = Obj.defineProperty, getOwnPropertyDescriptor = Obj.getOwnPropertyDescriptor;
  var getPrototypeOf = Obj.getPrototypeOf, create = Obj.create, trunc = Math.trunc;
  var hasOwn = Function.prototype.call.bind(Obj.prototype.hasOwnProperty);
  var isArray = Arr.isArray, parse = JSON.parse, stringify = JSON.stringify;
  var intrinsicEval = G.eval, IntrinsicFunction = G.Function;
  var AP = Arr.prototype, SP = Str.prototype, stringIndexOf = SP.indexOf;
  var regexpGlobal = getOwnPropertyDescriptor(RegExp.prototype, 'global').get;
  var valueOfs = [Number.prototype.valueOf, SP.valueOf, Boolean.prototype.valueOf,
                  BigInt.prototype.valueOf];
  var MAX_SAFE = 9007199254740991;
  var symSpecies = Symbol.species, symSpreadable = Symbol.isConcatSpreadable;
  var symMatch = Symbol.match, symSplit = Symbol.split, symReplace = Symbol.replace;

  function slot(value) {  // a built-in method's attributes
    return { __proto__: null, value: value, writable: true, enumerable: false, configurable: true };
  }
  function put(target, key, value) {  // CreateDataPropertyOrThrow
    defineProperty(target, key, { __proto__: null, value: value, writable: true, enumerable: true,
                                  configurable: true });
  }
  function install(target, name, fn, length) {
    defineProperty(fn, 'length', { __proto__: null, value: length, configurable: true });
    defineProperty(target, name, slot(fn));
  }
  function toObject(value, name) {
    if (value === undefined || value === null) {
      throw new TypeErr(name + ' called on null or undefined');
    }
    return Obj(value);
  }
  function toInteger(value) {
    var n = +value;
    return n !== n ? 0 : trunc(n);
  }
  function toLength(value) {
    var n = toInteger(value);
    return n <= 0 ? 0 : n > MAX_SAFE ? MAX_SAFE : n;
  }
  function isObject(value) {
    return value !== null && (typeof value === 'object' || typeof value === 'function');
  }

  // 1. Binary buffers and Proxy: gone.
  for (var i = 0; i < removed.length; i++) delete G[removed[i]];

  // 2. JSON.stringify recurses in C without a stack check, but calls a replacer function for
  // every value, and calls are checked: always give it one. A property list (an array
  // replacer) becomes a function that picks those keys, in the list's order (integer-like keys
  // aside, which an object always lists first).
  function identity(key, value) { return value; }
  function is(kind, value) {  // 0 Number, 1 String, 2 Boolean, 3 BigInt object
    try { apply(valueOfs[kind], value, []); return true; } catch (e) { return false; }
  }
  function isWrapper(value) {  // what JSON unwraps to a primitive
    return is(0, value) || is(1, value) || is(2, value) || is(3, value);
  }
  function keyPicker(list) {
    var keys = [], count = 0, length = toLength(list.length);
    for (var i = 0; i < length; i++) {
      var v = list[i], key;
      if (typeof v === 'string') key = v;
      else if (typeof v === 'number') key = '' + v;
      else if (typeof v === 'object' && v !== null && (is(0, v) || is(1, v))) key = `${v}`;
      else continue;
      var seen = false;
      for (var j = 0; j < count; j++) if (keys[j] === key) { seen = true; break; }
      if (!seen) put(keys, count++, key);
    }
    return function (key, value) {
      if (value === null || typeof value !== 'object' || isArray(value) || isWrapper(value)) {
        return value;
      }
      var picked = {};
      for (var j = 0; j < count; j++) put(picked, keys[j], value[keys[j]]);
      return picked;
    };
  }
  install(JSON, 'stringify', { stringify(value, replacer, space) {
    var each = identity;
    if (typeof replacer === 'function') {
      each = function (key, v) { return apply(replacer, this, [key, v]); };
    } else if (isArray(replacer)) each = keyPicker(replacer);
    return apply(stringify, JSON, [value, each, space]);
  } }.stringify, 3);

  // 3. Array methods that loop over `length` in C, holes included, without calling anything.
  function lengthOf(name, value) {  // the length the built-in will read, read the same way
    var o = Obj(value), v;
    for (;;) {
      var d = getOwnPropertyDescriptor(o, 'length');
      if (d !== undefined) {
        if (!hasOwn(d, 'value')) {
          throw new TypeErr('Array.prototype.' + name +
                            ' in a condition needs a length that is a value, not a getter');
        }
        v = d.value;
        break;
      }
      o = getPrototypeOf(o);
      if (o === null) return 0;
    }
    if (isObject(v)) {
      throw new TypeErr('Array.prototype.' + name +
                        ' in a condition needs a length that is a number, not an object');
    }
    if (typeof v === 'symbol' || typeof v === 'bigint') return 0;  // the built-in throws
    var n = toLength(v);
    if (n > lengthCap) {
      throw new RangeErr('Array.prototype.' + name + ' over a length of ' + n +
                         ': conditions may go through at most ' + lengthCap + ' elements');
    }
    return n;
  }
  var walking = ['join', 'toLocaleString', 'indexOf', 'lastIndexOf', 'includes', 'reverse',
                 'splice', 'slice', 'copyWithin', 'fill', 'every', 'some', 'forEach', 'map',
                 'filter', 'reduce', 'reduceRight', 'find', 'findIndex', 'shift', 'unshift'];
  walking.forEach(function (name) {
    var original = AP[name];
    if (typeof original !== 'function') return;
    install(AP, name, { [name]() {
      if (this !== undefined && this !== null) lengthOf(name, this);
      return apply(original, this, arguments);
    } }[name], original.length);
  });
  var sort = AP.sort;
  function compareStrings(x, y) {  // the default order (undefined and holes never get here)
    var a = `${x}`, b = `${y}`;
    return a < b ? -1 : b < a ? 1 : 0;
  }
  install(AP, 'sort', { sort(comparefn) {
    if (comparefn !== undefined && typeof comparefn !== 'function') {
      throw new TypeErr('the comparison function must be either a function or undefined');
    }
    if (this !== undefined && this !== null) lengthOf('sort', this);
    return apply(sort, this, [comparefn === undefined ? compareStrings : comparefn]);
  } }.sort, 1);

  // concat, flat and flatMap read the lengths of other arrays after running user code (getters,
  // species constructors, the mapper), so no check beforehand holds: they are written here.
  function speciesCreate(original) {
    if (!isArray(original)) return [];
    var C = original.constructor;
    if (isObject(C)) {
      C = C[symSpecies];
      if (C === null) C = undefined;
    }
    if (C === undefined) return [];
    if (typeof C !== 'function') throw new TypeErr('the species of an array must be a constructor');
    return new C(0);
  }
  function spreadable(value) {
    if (!isObject(value)) return false;
    var s = value[symSpreadable];
    return s !== undefined ? !!s : isArray(value);
  }
  install(AP, 'concat', { concat(item) {
    var O = toObject(this, 'Array.prototype.concat');
    var A = speciesCreate(O), n = 0;
    for (var i = -1; i < arguments.length; i++) {
      var E = i < 0 ? O : arguments[i];
      if (spreadable(E)) {
        var len = toLength(E.length);
        if (n + len > MAX_SAFE) throw new TypeErr('array too long');
        for (var k = 0; k < len; k++, n++) if (k in E) put(A, n, E[k]);
      } else {
        if (n >= MAX_SAFE) throw new TypeErr('array too long');
        put(A, n++, E);
      }
    }
    A.length = n;
    return A;
  } }.concat, 1);
  function flatten(target, source, sourceLength, start, depth, mapper, thisArg) {
    var t = start;
    for (var i = 0; i < sourceLength; i++) {
      if (!(i in source)) continue;
      var element = source[i];
      if (mapper !== undefined) element = apply(mapper, thisArg, [element, i, source]);
      if (depth > 0 && isArray(element)) {
        t = flatten(target, element, toLength(element.length), t, depth - 1);
      } else {
        if (t >= MAX_SAFE) throw new TypeErr('array too long');
        put(target, t++, element);
      }
    }
    return t;
  }
  install(AP, 'flat', { flat() {
    var O = toObject(this, 'Array.prototype.flat'), length = toLength(O.length), depth = 1;
    if (arguments.length > 0 && arguments[0] !== undefined) {
      depth = toInteger(arguments[0]);
      if (depth < 0) depth = 0;
    }
    var A = speciesCreate(O);
    flatten(A, O, length, 0, depth);
    return A;
  } }.flat, 0);
  install(AP, 'flatMap', { flatMap(mapper, thisArg) {
    var O = toObject(this, 'Array.prototype.flatMap'), length = toLength(O.length);
    if (typeof mapper !== 'function') throw new TypeErr('flatMap mapper must be a function');
    var A = speciesCreate(O);
    flatten(A, O, length, 0, 1, mapper, thisArg);
    return A;
  } }.flatMap, 1);

  // 4. String searches are naive: (n - m + 1) * m character comparisons at worst. Each guard
  // converts to strings itself (user code runs once, here), checks, and hands the built-in
  // primitives; a pattern with its own method (a RegExp) is used as the built-in would.
  function isRegExp(value) {
    if (!isObject(value)) return false;
    var m = value[symMatch];
    if (m !== undefined) return !!m;
    try { return typeof apply(regexpGlobal, value, []) === 'boolean'; } catch (e) { return false; }
  }
  function searched(name, s, t) {
    var n = s.length, m = t.length;
    if (m <= n && (n - m + 1) * m > searchCap) {
      throw new RangeErr('String.prototype.' + name + ' of ' + m + ' characters in ' + n +
                         ': conditions may search at most ' + searchCap +
                         ' character comparisons');
    }
  }
  function self(value, name) {
    if (value === undefined || value === null) {
      throw new TypeErr('String.prototype.' + name + ' called on null or undefined');
    }
    return `${value}`;
  }
  ['indexOf', 'lastIndexOf', 'includes'].forEach(function (name) {
    var original = SP[name];
    install(SP, name, { [name](searchString) {
      var s = self(this, name);
      if (name === 'includes' && isRegExp(searchString)) {
        throw new TypeErr('String.prototype.includes takes a string, not a regular expression');
      }
      var t = `${searchString}`;
      searched(name, s, t);
      return apply(original, s, arguments.length > 1 ? [t, arguments[1]] : [t]);
    } }[name], 1);
  });
  var split = SP.split;
  install(SP, 'split', { split(separator, limit) {
    if (this === undefined || this === null) self(this, 'split');
    if (separator !== undefined && separator !== null) {
      var splitter = separator[symSplit];
      if (splitter !== undefined && splitter !== null) {
        return apply(splitter, separator, [this, limit]);
      }
    }
    var s = `${this}`;
    if (separator === undefined) return apply(split, s, [undefined, limit]);
    var t = `${separator}`;
    searched('split', s, t);
    return apply(split, s, [t, limit]);
  } }.split, 2);
  ['replace', 'replaceAll'].forEach(function (name) {
    var original = SP[name];
    if (typeof original !== 'function') return;
    install(SP, name, { [name](searchValue, replaceValue) {
      if (this === undefined || this === null) self(this, name);
      if (searchValue !== undefined && searchValue !== null) {
        if (name === 'replaceAll' && isRegExp(searchValue)) {
          var flags = searchValue.flags;
          if (flags === undefined || flags === null ||
              apply(stringIndexOf, `${flags}`, ['g']) < 0) {
            throw new TypeErr('String.prototype.replaceAll needs a global regular expression');
          }
        }
        var replacer = searchValue[symReplace];
        if (replacer !== undefined && replacer !== null) {
          return apply(replacer, searchValue, [this, replaceValue]);
        }
      }
      var s = `${this}`, t = `${searchValue}`;
      searched(name, s, t);
      return apply(original, s, [t, replaceValue]);
    } }[name], 2);
  });

  // 5. Compiling at run time: at most sourceCap characters. The global eval becomes an
  // indirect eval with that cap; the factory keeps the originals for its own use.
  function compiled(what, length) {
    if (length > sourceCap) {
      throw new RangeErr(what + ' of ' + length +
                         ' characters: conditions may compile at most ' + sourceCap);
    }
  }
  var cappedEval = { eval(code) {
    if (typeof code === 'string') compiled('eval', code.length);
    return intrinsicEval(code);
  } }.eval;
  defineProperty(G, 'eval', slot(cappedEval));
  function capConstructor(Original, prototype) {
    var Capped = function () {
      var texts = [], total = 0;
      for (var i = 0; i < arguments.length; i++) {
        var text = `${arguments[i]}`;
        total += text.length;
        put(texts, i, text);
      }
      compiled(Original.name, total);
      return construct(Original, texts, new.target === undefined ? Original : new.target);
    };
    defineProperty(Capped, 'prototype', { __proto__: null, value: prototype, writable: false });
    defineProperty(Capped, 'name', { __proto__: null, value: Original.name, configurable: true });
    defineProperty(Capped, 'length', { __proto__: null, value: 1, configurable: true });
    var d = getOwnPropertyDescriptor(prototype, 'constructor');
    d.value = Capped;
    defineProperty(prototype, 'constructor', d);
    return Capped;
  }
  var CappedFunction = capConstructor(IntrinsicFunction, IntrinsicFunction.prototype);
  defineProperty(G, 'Function', slot(CappedFunction));
  [getPrototypeOf(function* () {}), getPrototypeOf(async function () {}),
   getPrototypeOf(async function* () {})].forEach(function (prototype) {
    capConstructor(prototype.constructor, prototype);
  });

  return { Function: IntrinsicFunction, eval: intrinsicEval, parse: parse, create: create,
           defineProperty: defineProperty, global: G };
})
"""

# Builds the per-condition function inside QuickJS, from the originals `_SANDBOX_JS` kept. The
# source is first tried as an expression, compiled once into a real function (fastest: nothing
# is parsed per message). If it is not an expression it is a script: `Function` checks that it
# parses (without running it) and each message evaluates it with a direct eval, whose completion
# value is the script's last expression, as Nashorn's `engine.eval` gives; its `var`, `let` and
# `const` stay local to one evaluation, as with Nashorn's fresh bindings. A direct eval needs the
# original `eval`, which user code must not get (it compiles without the cap): the script runs
# `with` a scope whose `eval` gives the original once, to the wrapper's own call, and the global
# (capped) one to every later lookup. Both functions are made by `Function`, in the global scope,
# so user code sees `$`, `_kafka` and the built-ins, not this factory's variables. The wrapper
# parses the JSON it is handed and applies Conductor's truthiness, so only a boolean crosses back
# into Python.
_FACTORY_JS = r"""
(function (source, expression, original) {
  var condition, Fn = original.Function, parse = original.parse;
  if (expression !== null) {
    try {
      condition = new Fn('$', '_kafka', 'return (' + expression + '\n);');
    } catch (e) {
      if (!(e instanceof SyntaxError)) throw e;
    }
  }
  if (condition === undefined) {
    new Fn('$', '_kafka', source);
    var script = new Fn('$', '_kafka', '__heraldSource', '__heraldScope',
                        'with (__heraldScope) return eval(__heraldSource);');
    var intrinsicEval = original.eval, global = original.global, pending = false;
    var scope = original.create(null);
    original.defineProperty(scope, 'eval', { get: function () {
      if (pending) { pending = false; return intrinsicEval; }
      return global.eval;
    } });
    condition = function ($, meta) {
      pending = true;
      try { return script($, meta, source, scope); } finally { pending = false; }
    };
  }
  return function (message, meta) {
    var r = condition(parse(message), meta === null ? undefined : parse(meta));
    switch (typeof r) {
      case 'boolean': return r;
      case 'number': return r > 0;
      case 'bigint': return r > 0n;
      default: return false;
    }
  };
})
"""


# Parses a condition as the factory's fallback does (a function body), without running it, in a
# wrapper whose layout is known: the text starts at line 2, column 1, and the closing `})` is
# alone on the line after it. The factory's own wrappers and `new Function`'s put characters
# around the text that QuickJS then names ("unexpected token in expression: '}'"); this
# layout lets every error be placed in the user's text, or at its end. Returns null when the
# text parses, else the JSON of [message, line] (QuickJS gives lines but no columns).
_SYNTAX_JS = r"""
(function (text, original) {
  try {
    original.eval('(function ($, _kafka) {\n' + text + '\n})');
    return null;
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    return JSON.stringify([String(e.message), e.lineNumber || 0]);
  }
})
"""
_WRAPPER_LINES = 1  # lines of _SYNTAX_JS's wrapper before the text
_TOKEN_TAIL = re.compile(r": '.*'$")  # QuickJS names the offending token at the end
# One JavaScript token, enough to show the one an error is at: numbers, words, strings
# (perhaps unclosed), comments, punctuators longest first, else any single character.
_TOKEN = re.compile(
    r"""\d\w*(?:\.\w*)?|\.\d\w*|[\w$\\\u0080-\uffff]+
    |'(?:[^'\\\n]|\\.)*'?|"(?:[^"\\\n]|\\.)*"?|`(?:[^`\\]|\\.)*`?
    |/\*.*?(?:\*/|$)|//[^\n]*
    |>>>=|\.\.\.|===|!==|\*\*=|<<=|>>=|>>>|&&=|\|\|=|\?\?=
    |=>|==|!=|<=|>=|&&|\|\||\?\?|\?\.|\+\+|--|[-+*/%&|^]=|\*\*|<<|>>
    |\S""",
    re.VERBOSE | re.DOTALL,
)
_MAX_PROBES = 4096  # prefixes tried to find the column; beyond that only the line is given


def _syntax_error(parse: Any, text: str) -> tuple[str, int] | None:
    """(message, line in `text`, 1-based) of text's syntax error, or None if it parses."""
    found = parse(text)
    if found is None:
        return None
    message, line = json.loads(found)
    return str(message), int(line) - _WRAPPER_LINES


def _position(text: str, offset: int) -> str:
    """`line L, column C` (1-based) of an offset in `text`."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _error_end(parse: Any, text: str, error: tuple[str, int]) -> int | None:
    """The end of the token the error is at: the shortest prefix of `text` that fails the
    same way on the same line (a shorter one fails at its end, on the wrapper's line)."""
    line = error[1]
    start = sum(len(part) + 1 for part in text.split("\n")[: line - 1])
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    for stop in range(start + 1, min(end, start + _MAX_PROBES) + 1):
        if _syntax_error(parse, text[:stop]) == error:
            return stop
    return None


def _token_at(text: str, offset: int) -> tuple[int, str]:
    """(start, text) of the token holding the character at `offset`."""
    line_start = text.rfind("\n", 0, offset) + 1
    for match in _TOKEN.finditer(text, line_start):
        if match.end() > offset:
            if match.start() <= offset:
                return match.start(), match.group()
            break
    return offset, text[offset]


def _describe_syntax_error(context: quickjs.Context, original: Any, text: str) -> str | None:
    """Where and what the syntax error in `text` is, in the user's own text: `at line 1,
    column 11 (')'): unexpected token in expression`, or `(end of condition)` when the text
    stops too early; None when it parses (the failure was something else).

    Never QuickJS's view of the token: the text QuickJS parsed is wrapped, so its message may
    name a character of the wrapper (`'}'`) the user never wrote.
    """
    try:
        check = context.eval(_SYNTAX_JS)
        return _locate(lambda part: check(part, original), text)
    except quickjs.JSException:  # a prefix that ran (text that closes its wrapper) and threw
        return None


def _locate(parse: Any, text: str) -> str | None:
    """The description `_describe_syntax_error` gives, from the parsing function."""
    error = _syntax_error(parse, text)
    if error is None:
        return None
    message, line = error
    if line > text.count("\n") + 1:  # on the wrapper's closing line: the text ended early
        if _TOKEN_TAIL.search(message) or message.startswith("expecting"):
            message = "the condition is incomplete"
        return f"at {_position(text, len(text.rstrip()))} (end of condition): {message}"
    message = _TOKEN_TAIL.sub("", message)
    stop = _error_end(parse, text, error) if line >= 1 else None
    if stop is None:
        return f"at line {line}: {message}" if line >= 1 else f": {message}"
    start, token = _token_at(text, stop - 1)
    shown = token if len(token) <= 40 else token[:37] + "..."
    return f"at {_position(text, start)} ({shown!r}): {message}"


def truthy(value: Any) -> bool:
    """Conductor's `ScriptEvaluator.toBoolean`: the one truthiness conditions use.

    A boolean is itself; a number is true when > 0; everything else (strings, even "true",
    objects, lists, None) is false. Deliberately not Python's or JavaScript's truthiness.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return value > 0
    return False


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    """What compiles a JavaScript condition: the same spec compiles the same condition in any
    process, so a spec is also the condition's identity in the evaluator process."""

    source: str
    evaluator_type: str
    time_limit_ms: int
    memory_limit_bytes: int

    def compile(self) -> Condition:
        return compile_condition(
            self.source,
            self.evaluator_type,
            time_limit_ms=self.time_limit_ms,
            memory_limit_bytes=self.memory_limit_bytes,
        )


@dataclass(slots=True)
class ConditionJob:
    """One condition to evaluate on one serialised message; `verdict` is filled in by whoever
    runs it: True or False, or the ConditionError that dead-letters the message. `handler` and
    `origin` (anything with topic, partition and offset: the record) say which it is, for the
    log when it crashes or stalls its evaluator; `label` is formatted only then."""

    spec: ConditionSpec
    message_json: str
    meta_json: str | None
    handler: str = ""
    origin: Any = None
    verdict: bool | ConditionError | None = None

    @property
    def label(self) -> str:
        origin = self.origin
        if origin is None:
            return f"handler {self.handler!r}"
        where = f"{origin.topic}/{origin.partition}@{origin.offset}"
        return f"handler {self.handler!r} on {where}"


class Condition(ABC):
    """A compiled condition. Build with `compile_condition`; call `evaluate` per message."""

    #: True when evaluating runs handler authors' JavaScript, which the worker runs in its
    #: evaluator process (`agents.evaluator_process`) through `job`, not in-process.
    isolated = False

    def __init__(self, expression: str | None, evaluator_type: str) -> None:
        self.expression = expression
        self.evaluator_type = evaluator_type

    @property
    def always_true(self) -> bool:
        """True for an empty condition: callers may skip evaluation (and serialisation)."""
        return False

    @abstractmethod
    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        """Whether the handler applies to `message` (`meta` is `Envelope.meta()`).

        Raises only ConditionError: the condition threw, ran out of time or memory, or the
        message cannot be given to it.
        """

    def decide(self, message: Any) -> bool | None:
        """The verdict on `message` where it is certain without running the condition's
        JavaScript (streams.native_conditions), else None: `job` or `evaluate` then."""
        return None

    def evaluate_json(self, message_json: str, meta_json: str | None) -> bool:
        """`evaluate` on a message given as JSON (as `job` serialises it)."""
        meta = json.loads(meta_json) if meta_json is not None else None
        return self.evaluate(json.loads(message_json), meta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.evaluator_type!r}, {self.expression!r})"


class _AlwaysTrue(Condition):
    @property
    def always_true(self) -> bool:
        return True

    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        return True


class _ValueParam(Condition):
    """Conductor's `ValueParamEvaluator`: the value of one field of the message, via truthy.

    Conductor looks the expression up as a top-level key of a JSON object message and fails
    for any other message. Herald does the same, and when no such key exists also reads the
    expression as a path (`a.b[0]`, `_kafka.key`), which Conductor cannot do.
    """

    def __init__(self, expression: str, evaluator_type: str) -> None:
        super().__init__(expression, evaluator_type)
        self._key = expression
        try:
            self._path: JsonPath | None = compile_path(expression)
        except TemplateError:
            self._path = None  # not a path: a plain key only

    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        path = self._path
        if path is not None and path.on_meta:
            return truthy(path.resolve(message, meta or {}))
        if not isinstance(message, Mapping):
            raise ConditionError(
                f"value-param condition {self._key!r} needs a JSON object message, "
                f"got {type(message).__name__}"
            )
        if self._key in message:
            return truthy(message[self._key])
        return truthy(path.resolve(message, meta or {})) if path is not None else False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _as_expression(source: str) -> str:
    """The source without trailing semicolons, so `$.a == 1;` still compiles as an expression."""
    return source.rstrip().rstrip(";").rstrip()


class _Script(Condition):
    """A javascript/graaljs condition in its own QuickJS context."""

    isolated = True

    def __init__(
        self, source: str, evaluator_type: str, time_limit_ms: int, memory_limit_bytes: int
    ) -> None:
        super().__init__(source, evaluator_type)
        self._source = source
        self._time_limit_ms = time_limit_ms
        self._memory_limit_bytes = memory_limit_bytes
        # When the source never names `_kafka`, the metadata is not serialised and parsed (~3 µs).
        self._uses_meta = META_NAME in source
        self._spec = ConditionSpec(source, evaluator_type, time_limit_ms, memory_limit_bytes)
        # Field-against-literal comparisons are decided here where the answer is certain,
        # with no serialising and no round trip to the evaluator process.
        native = compile_native(source)
        self._decide = native.decide if native is not None else None
        # Compiled here to refuse bad syntax at configuration time, then let go: a context is
        # ~130 KB, and a worker evaluates in its evaluator process, not here. Built again on
        # first use (`evaluate_json`), and after QuickJS gave up.
        self._build()
        self._run: Any = None

    def _build(self) -> Any:
        """A fresh context holding the compiled condition; raises ConditionError on bad syntax."""
        context = quickjs.Context()
        original = _sandbox(context, self._time_limit_ms, self._memory_limit_bytes)
        factory = context.eval(_FACTORY_JS)
        expression = _as_expression(self._source)
        try:
            return factory(self._source, expression or None, original)
        except quickjs.JSException as exc:
            where = _describe_syntax_error(context, original, self._source)
            what = where if where is not None else f": {_first_line(exc)}"
            raise ConditionError(f"condition {self._source!r} does not parse {what}") from None

    @property
    def spec(self) -> ConditionSpec:
        return self._spec

    def job(
        self, message: Any, meta: Mapping[str, Any] | None, handler: str = "", origin: Any = None
    ) -> ConditionJob:
        """The evaluation of this condition on `message`, to run elsewhere (the evaluator
        process, `streams.evaluator`, or `handlers.judge_here`). Raises ConditionError when the
        message cannot be given to the condition, as `evaluate` does."""
        message_json, meta_json = self._serialise(message, meta)
        return ConditionJob(self._spec, message_json, meta_json, handler, origin)

    def decide(self, message: Any) -> bool | None:
        decide = self._decide
        return None if decide is None else decide(message)

    @property
    def native(self) -> bool:
        """Whether the condition is in streams.native_conditions' grammar."""
        return self._decide is not None

    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        decided = self.decide(message)
        if decided is not None:
            return decided
        message_json, meta_json = self._serialise(message, meta)
        return self.evaluate_json(message_json, meta_json)

    def evaluate_json(self, message_json: str, meta_json: str | None) -> bool:
        """`evaluate` on a message already serialised (`_serialise`): what the evaluator
        process runs."""
        try:
            run = self._run
            if run is None:
                run = self._run = self._build()
            return run(message_json, meta_json) is True
        except quickjs.JSException as exc:
            raise self._failure(exc) from None
        except Exception as exc:  # anything unexpected from the binding: start afresh
            self._run = None
            raise ConditionError(f"condition failed: {type(exc).__name__}: {exc}") from None

    def _serialise(self, message: Any, meta: Mapping[str, Any] | None) -> tuple[str, str | None]:
        try:
            message_json = to_json(message)
            meta_json = to_json(meta if meta is not None else {}) if self._uses_meta else None
        except (TypeError, ValueError, RecursionError) as exc:
            raise ConditionError(f"message cannot be given to the condition: {exc}") from None
        return message_json, meta_json

    def _failure(self, exc: quickjs.JSException) -> ConditionError:
        """Classify a QuickJS exception; recreate the context when QuickJS itself gave up."""
        text = str(exc)
        first = _first_line(exc)
        if first == "InternalError: interrupted":
            self._run = None
            return ConditionError(f"condition timed out after {self._time_limit_ms} ms")
        if "out of memory" in text:
            self._run = None
            return ConditionError(
                f"condition exceeded its memory limit of {self._memory_limit_bytes} bytes"
            )
        # When QuickJS cannot even allocate the error, the binding reports a bare "null" with no
        # stack, exactly what `throw null` gives: the two cannot be told apart, so say both.
        if "\n" not in text.strip() or text.startswith("(Failed obtaining"):
            self._run = None
            return ConditionError(
                f"condition threw {first} or exceeded its memory limit of "
                f"{self._memory_limit_bytes} bytes"
            )
        if first.startswith("InternalError"):  # stack overflow and the like: be safe
            self._run = None
        return ConditionError(f"condition threw: {first}")


def _sandbox(context: quickjs.Context, time_limit_ms: int, memory_limit_bytes: int) -> Any:
    """Set a fresh context's limits and harden it (`_SANDBOX_JS`) before any user code runs;
    returns the originals the factory needs (a QuickJS object only Herald's code holds).

    Hardening takes about 0.7 ms, mostly compiling `_SANDBOX_JS`; the time limit (process CPU
    time, so other threads count) is set after it, so that even a limit of 1 ms cannot cut it
    short.
    """
    context.set_memory_limit(memory_limit_bytes)
    context.set_max_stack_size(_STACK_BYTES)
    harden = context.eval(_SANDBOX_JS)
    removed = context.eval(json.dumps(list(_REMOVED_GLOBALS)))
    # Numbers go as floats: the binding passes a Python int as a 32-bit one.
    original = harden(
        removed,
        float(memory_limit_bytes // _VALUE_BYTES),
        float(time_limit_ms * _SEARCH_STEPS_PER_MS),
        float(_MAX_SOURCE_CHARS),
    )
    context.set_time_limit(time_limit_ms / 1000)
    return original


def _refuse_unsafe(source: str) -> None:
    """Refuse, at configuration time, a source that is too long to compile safely or that names
    what the sandbox removed (it would only fail on every message). A name is taken as used
    unless it follows `.` or precedes `:` (a property or key); one inside a template literal is
    not seen here and fails at run time instead."""
    if len(source) > _MAX_SOURCE_CHARS:
        raise ConditionError(
            f"condition is {len(source)} characters long; conditions may be at most "
            f"{_MAX_SOURCE_CHARS}"
        )
    removed = frozenset(_REMOVED_GLOBALS)
    tokens = [match for match in _TOKEN.finditer(source) if not match.group().startswith("//")]
    tokens = [match for match in tokens if not match.group().startswith("/*")]
    for i, match in enumerate(tokens):
        name = match.group()
        if name not in removed:
            continue
        before = tokens[i - 1].group() if i > 0 else ""
        after = tokens[i + 1].group() if i + 1 < len(tokens) else ""
        if before in (".", "?.") or after == ":":
            continue
        raise ConditionError(
            f"condition uses {name}, which conditions cannot use (their sandbox has no typed "
            "arrays, ArrayBuffer, SharedArrayBuffer, DataView, Atomics or Proxy)"
        )


def _check_limits(time_limit_ms: int, memory_limit_bytes: int) -> None:
    if time_limit_ms <= 0:
        raise ConditionError(f"time_limit_ms must be positive, got {time_limit_ms}")
    if memory_limit_bytes < 1024 * 1024:
        raise ConditionError(f"memory_limit_bytes must be at least 1 MiB, got {memory_limit_bytes}")


def compile_condition(
    expression: str | None,
    evaluator_type: str | None = "javascript",
    *,
    time_limit_ms: int = 100,
    memory_limit_bytes: int = 16 * 1024 * 1024,
) -> Condition:
    """Compile a handler's condition once, at config load.

    `evaluator_type` is `javascript` (also when None, as in Conductor), `graaljs` (the same) or
    `value-param`; names are matched case-insensitively. An empty or None expression is always
    true (Conductor's `StringUtils.isNotEmpty`; a blank but non-empty one is evaluated, as there).
    Raises ConditionError for an unknown evaluator type (Conductor would quietly fall back to
    JavaScript), for JavaScript that does not parse, is longer than `_MAX_SOURCE_CHARS` or
    names what the sandbox removed (`_REMOVED_GLOBALS`); nothing of the condition runs here.
    """
    kind = (evaluator_type or "javascript").strip().lower()
    if kind not in EVALUATOR_TYPES:
        known = ", ".join(sorted(EVALUATOR_TYPES))
        raise ConditionError(f"unknown evaluatorType {evaluator_type!r}; use one of {known}")
    if not expression:
        return _AlwaysTrue(expression, kind)
    if not isinstance(expression, str):
        raise ConditionError(f"condition must be a string, got {type(expression).__name__}")
    if kind == "value-param":
        return _ValueParam(expression, kind)
    _check_limits(time_limit_ms, memory_limit_bytes)
    _refuse_unsafe(expression)
    return _Script(expression, kind, time_limit_ms, memory_limit_bytes)
