"""Sans-IO: a bounded, global-free decoder for the stdlib wire's pickled record dicts.

``logging.handlers.SocketHandler`` sends ``pickle.dumps(record_dict, 1)``. The collector
reads those frames from anyone who can connect, so it does not hand them to
:mod:`pickle`: even with every global refused, the C unpickler lets a ~10-byte frame grow
its memo array to any index (``LONG_BINPUT 0x04000000`` costs 1 GiB), and what it returns
can be a DAG that expands exponentially, a list nested 100,000 deep, a dict with a tuple
key or an int that ``str()`` refuses to print. This module is a small interpreter of the
*data* opcodes of pickle protocols 0-5 written for that input.

Rules this module keeps:

- Data only: every opcode that names a global, calls, builds or extends an object
  (``GLOBAL``, ``STACK_GLOBAL``, ``REDUCE``, ``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ*``,
  ``EXT*``, ``PERSID``, ``BINPERSID``, out-of-band buffers) is refused. Nothing a client
  sends can run code or import anything.
- Bounded: every length is checked against the bytes that are left before anything is
  allocated for it; memo indexes are dense (the next free index or one already used) and
  below :data:`MAX_MEMO`; the values pushed, elements added and memo entries together stay
  under a budget; ints have at most :data:`MAX_INT_DIGITS` decimal digits; dict keys and
  set members are scalars (so hashing never recurses).
- :func:`jsonable` then turns what was decoded into JSON-ready data with a depth bound
  and an *expanded*-size bound: an object the memo lets the frame reference many times is
  counted each time, so a DAG that would expand exponentially is refused before it is.
- Every failure is one :class:`ProtocolError` naming the problem; nothing else is ever
  raised for any input (``tests/unit/test_unpickle.py`` fuzzes for that). The work done
  is linear in the frame's length.
"""

from __future__ import annotations

import codecs
import math
import struct
from typing import Any

from ._errors import ProtocolError, RemoteProtocolError
from ._text import safe_repr

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_ITEMS",
    "MAX_MEMO",
    "MAX_NODES",
    "ShapeError",
    "decode_record",
    "jsonable",
    "loads",
]

#: Memo entries a frame may create. ``pickle.dumps`` of a record uses one per string and
#: container (a record has a few dozen); 100,000 is far beyond any record.
MAX_MEMO = 100_000
#: Values pushed + elements added + memo entries per frame. Each costs one Python
#: reference or object, so this is what bounds the decoder's memory beyond the frame
#: itself (200,000 small objects: ~15 MiB at worst).
MAX_ITEMS = 200_000
#: Decimal digits of an int: CPython's own limit for ``int <-> str`` (the JSON writer
#: must be able to print every int we accept).
MAX_INT_DIGITS = 4300
#: Nesting of containers in a record (the record dict is depth 1). Records nest a few
#: levels; 32 is generous, and keeps every later walk far from the recursion limit.
MAX_DEPTH = 32
#: Nodes (containers, scalars) of the expanded record, shared objects counted each time
#: they are referenced.
MAX_NODES = 100_000

# bit_length bound that keeps an int under MAX_INT_DIGITS digits: 4300 * log2(10) = 14284.
_MAX_INT_BITS = 14_000
_SCALAR_KEYS = (str, int, float, bool, type(None), bytes)
_SCALAR_TYPES = frozenset(_SCALAR_KEYS)
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct(">d")

# Opcodes refused on sight, by name (they are what makes pickle a code format).
_REFUSED = {
    ord("c"): "GLOBAL", 0x93: "STACK_GLOBAL", ord("R"): "REDUCE", ord("b"): "BUILD",
    ord("i"): "INST", ord("o"): "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX",
    0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", ord("P"): "PERSID", ord("Q"): "BINPERSID",
    0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}


class ShapeError(RemoteProtocolError):
    """A pickle that decoded, but is not a record :func:`jsonable` can write."""


def _fail(text: str) -> ProtocolError:
    return RemoteProtocolError(f"refused pickle frame: {text}")


def _check_int(value: int) -> int:
    if value.bit_length() > _MAX_INT_BITS:
        raise _fail(f"int of more than {MAX_INT_DIGITS} digits")
    return value


def _text_int(line: bytes) -> int:
    if len(line) > MAX_INT_DIGITS + 2:
        raise _fail(f"int of more than {MAX_INT_DIGITS} digits")
    try:
        return _check_int(int(line, 0))
    except ValueError:
        raise _fail("malformed text int") from None


def _key(value: object) -> object:
    # Only scalars may be hashed: a tuple key nested 100,000 deep would recurse in C.
    if type(value) not in _SCALAR_TYPES:
        raise _fail(f"a {type(value).__name__} as a dict key or set member")
    return value


def loads(data: bytes, *, max_items: int = MAX_ITEMS, max_memo: int = MAX_MEMO) -> Any:
    """Decode one pickle (protocols 0-5, data opcodes only) from the whole of *data*.

    Returns dicts, lists, tuples, sets, frozensets, str, bytes, bytearray, int, float,
    bool and None, shared as the pickle's memo shares them (so the result may be a DAG or
    even cyclic: pass it to :func:`jsonable` before walking it).

    Raises:
        ProtocolError: a refused opcode, a truncated or malformed pickle, trailing bytes
            after STOP, or a bound exceeded (see the module constants).
    """
    if type(data) is not bytes:
        data = bytes(data)
    mv = memoryview(data)
    end = len(mv)
    unpack_u32 = _U32.unpack_from
    unpack_f64 = _F64.unpack_from
    pos = 0
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    budget = max_items

    def take(n: int) -> memoryview:
        nonlocal pos
        if n < 0 or n > end - pos:
            raise _fail("truncated (a length runs past the end of the frame)")
        chunk = mv[pos : pos + n]
        pos += n
        return chunk

    def line() -> bytes:
        nonlocal pos
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise _fail("truncated (a text argument has no newline)")
        chunk = bytes(mv[pos:nl])
        pos = nl + 1
        return chunk

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not metastack:
            raise _fail("an opcode needs a MARK that is not there")
        items = stack
        stack = metastack.pop()
        return items

    def put(index: int) -> None:
        nonlocal budget
        if not stack:
            raise _fail("PUT with an empty stack")
        if index < 0 or index > len(memo) or index >= max_memo:
            raise _fail(f"memo index {index} (must be dense and below {max_memo})")
        if index not in memo:
            budget -= 1
        memo[index] = stack[-1]

    def get(index: int) -> None:
        try:
            stack.append(memo[index])
        except KeyError:
            raise _fail(f"memo index {index} was never stored") from None

    def utf8(raw: memoryview) -> str:
        try:
            return str(raw, "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _fail("a string that is not UTF-8") from None

    def ascii_str(raw: bytes) -> str:
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise _fail("a protocol-0/1 string that is not ASCII") from None

    def set_items(target: object, items: list[Any]) -> None:
        if type(target) is not dict:
            raise _fail("SETITEM(S) on something that is not a dict")
        if len(items) % 2:
            raise _fail("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) not in _SCALAR_TYPES:
                _key(key)  # raises
            target[key] = items[i + 1]

    # Values pushed, elements added and memo entries are each at most one per opcode, and
    # an opcode is at least one byte: a frame of up to max_items / 3 bytes cannot exceed
    # the budget, so only a longer one pays for counting.
    counted = 3 * end > max_items
    try:
        while pos < end:
            op = data[pos]
            pos += 1
            if counted:
                budget -= 1
                if budget < 0:
                    raise _fail(f"more than {max_items} values")
            # The opcodes of a protocol-1 record dict first, inlined (this loop is the
            # stdlib wire's cost per record).
            if op == 0x71:  # q BINPUT
                if pos >= end:
                    raise _fail("truncated (BINPUT without its index)")
                index = data[pos]
                pos += 1
                if index == len(memo) and stack and index < max_memo:
                    memo[index] = stack[-1]
                    budget -= 1
                else:
                    put(index)
            elif op == 0x58:  # X BINUNICODE
                if end - pos < 4:
                    raise _fail("truncated (a fixed-size argument runs past the end)")
                n = unpack_u32(data, pos)[0]
                pos += 4
                if n > end - pos:
                    raise _fail("truncated (a length runs past the end of the frame)")
                try:
                    stack.append(data[pos : pos + n].decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise _fail("a string that is not UTF-8") from None
                pos += n
            elif op == 0x8C:  # SHORT_BINUNICODE
                stack.append(utf8(take(take(1)[0])))
            elif op == 0x94:  # MEMOIZE
                put(len(memo))
            elif op == 0x68:  # h BINGET
                if pos >= end:
                    raise _fail("truncated (BINGET without its index)")
                get(data[pos])
                pos += 1
            elif op == 0x6A:  # j LONG_BINGET
                get(_U32.unpack(take(4))[0])
            elif op == 0x72:  # r LONG_BINPUT
                put(_U32.unpack(take(4))[0])
            elif op == 0x28:  # ( MARK
                metastack.append(stack)
                stack = []
            elif op == 0x4B:  # K BININT1
                if pos >= end:
                    raise _fail("truncated (BININT1 without its value)")
                stack.append(data[pos])
                pos += 1
            elif op == 0x4D:  # M BININT2
                stack.append(_U16.unpack(take(2))[0])
            elif op == 0x4A:  # J BININT
                stack.append(_I32.unpack(take(4))[0])
            elif op == 0x47:  # G BINFLOAT
                if end - pos < 8:
                    raise _fail("truncated (a fixed-size argument runs past the end)")
                stack.append(unpack_f64(data, pos)[0])
                pos += 8
            elif op == 0x4E:  # N NONE
                stack.append(None)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x75:  # u SETITEMS
                items = pop_mark()
                budget -= len(items)
                if not stack:
                    raise _fail("SETITEMS with no dict")
                set_items(stack[-1], items)
            elif op == 0x73:  # s SETITEM
                if len(stack) < 3:
                    raise _fail("SETITEM needs a dict, a key and a value")
                value, key = stack.pop(), stack.pop()
                set_items(stack[-1], [key, value])
            elif op == 0x7D:  # } EMPTY_DICT
                stack.append({})
            elif op == 0x5D:  # ] EMPTY_LIST
                stack.append([])
            elif op == 0x29:  # ) EMPTY_TUPLE
                stack.append(())
            elif op == 0x65:  # e APPENDS
                items = pop_mark()
                budget -= len(items)
                if not stack or type(stack[-1]) is not list:
                    raise _fail("APPENDS on something that is not a list")
                stack[-1].extend(items)
            elif op == 0x61:  # a APPEND
                if len(stack) < 2 or type(stack[-2]) is not list:
                    raise _fail("APPEND on something that is not a list")
                value = stack.pop()
                stack[-1].append(value)
            elif op == 0x74:  # t TUPLE
                items = pop_mark()  # first: pop_mark rebinds stack
                stack.append(tuple(items))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1, TUPLE2, TUPLE3
                n = op - 0x84
                if len(stack) < n:
                    raise _fail("TUPLE1/2/3 with too few items")
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif op == 0x6C:  # l LIST
                items = pop_mark()
                stack.append(items)
            elif op == 0x64:  # d DICT
                items = pop_mark()
                d: dict[Any, Any] = {}
                set_items(d, items)
                stack.append(d)
            elif op == 0x8A:  # LONG1
                stack.append(int.from_bytes(take(take(1)[0]), "little", signed=True))
            elif op == 0x8B:  # LONG4
                n = _I32.unpack(take(4))[0]
                if n > _MAX_INT_BITS // 8 + 1:
                    raise _fail(f"int of more than {MAX_INT_DIGITS} digits")
                stack.append(_check_int(int.from_bytes(take(n), "little", signed=True)))
            elif op == 0x49:  # I INT (also I01 / I00: True / False in protocols 0-1)
                text = line()
                if text == b"01":
                    stack.append(True)
                elif text == b"00":
                    stack.append(False)
                else:
                    stack.append(_text_int(text))
            elif op == 0x4C:  # L LONG
                text = line()
                stack.append(_text_int(text[:-1] if text.endswith(b"L") else text))
            elif op == 0x46:  # F FLOAT
                try:
                    stack.append(float(line()))
                except ValueError:
                    raise _fail("malformed text float") from None
            elif op == 0x56:  # V UNICODE
                try:
                    stack.append(str(line(), "raw-unicode-escape"))
                except UnicodeDecodeError:
                    raise _fail("malformed UNICODE argument") from None
            elif op == 0x53:  # S STRING
                text = line()
                if len(text) < 2 or text[0] != text[-1] or text[0] not in b"\"'":
                    raise _fail("STRING argument is not quoted")
                try:
                    raw = codecs.escape_decode(text[1:-1])[0]
                except ValueError:
                    raise _fail("malformed STRING escape") from None
                stack.append(ascii_str(raw))
            elif op == 0x54:  # T BINSTRING
                stack.append(ascii_str(bytes(take(_I32.unpack(take(4))[0]))))
            elif op == 0x55:  # U SHORT_BINSTRING
                stack.append(ascii_str(bytes(take(take(1)[0]))))
            elif op == 0x8D:  # BINUNICODE8
                stack.append(utf8(take(_U64.unpack(take(8))[0])))
            elif op == 0x42:  # B BINBYTES
                stack.append(bytes(take(_U32.unpack(take(4))[0])))
            elif op == 0x43:  # C SHORT_BINBYTES
                stack.append(bytes(take(take(1)[0])))
            elif op == 0x8E:  # BINBYTES8
                stack.append(bytes(take(_U64.unpack(take(8))[0])))
            elif op == 0x96:  # BYTEARRAY8
                stack.append(bytearray(take(_U64.unpack(take(8))[0])))
            elif op == 0x67:  # g GET
                get(_text_int(line()))
            elif op == 0x70:  # p PUT
                put(_text_int(line()))
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                budget -= len(items)
                if not stack or type(stack[-1]) is not set:
                    raise _fail("ADDITEMS on something that is not a set")
                stack[-1].update(_key(x) for x in items)
            elif op == 0x91:  # FROZENSET
                items = pop_mark()
                stack.append(frozenset(_key(x) for x in items))
            elif op == 0x30:  # 0 POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # 1 POP_MARK
                pop_mark()
            elif op == 0x32:  # 2 DUP
                if not stack:
                    raise _fail("DUP with an empty stack")
                stack.append(stack[-1])
            elif op == 0x80:  # PROTO
                if take(1)[0] > 5:
                    raise _fail("pickle protocol above 5")
            elif op == 0x95:  # FRAME (protocol 4 framing hint: nothing to do)
                take(8)
            elif op == 0x2E:  # . STOP
                if metastack:
                    raise _fail("STOP inside an open MARK")
                if len(stack) != 1:
                    raise _fail(f"STOP with {len(stack)} values on the stack (want 1)")
                if pos != end:
                    raise _fail(f"{end - pos} bytes after STOP")
                return stack[0]
            elif op in _REFUSED:
                raise _fail(f"opcode {_REFUSED[op]} (this collector loads data only)")
            else:
                raise _fail(f"unknown opcode 0x{op:02x}")
        raise _fail("truncated (no STOP)")
    except struct.error:
        raise _fail("truncated (a fixed-size argument runs past the end)") from None
    except MemoryError:
        raise _fail("out of memory while decoding") from None


_Json = dict[str, Any] | list[Any] | str | int | float | bool | None


class _Walk:
    __slots__ = ("chars", "max_chars", "max_depth", "nodes", "strict")

    def __init__(self, strict: bool, max_depth: int, max_nodes: int, max_chars: int) -> None:
        self.strict = strict
        self.max_depth = max_depth
        self.nodes = max_nodes
        self.chars = max_chars
        self.max_chars = max_chars

    def refuse(self, text: str) -> str:
        if self.strict:
            raise ShapeError(f"refused record: {text}")
        return f"<mplog: {text}>"

    def value(self, v: Any, depth: int) -> _Json:
        self.nodes -= 1
        if self.nodes < 0:
            return self.refuse("expands to too many values")
        t = type(v)
        if t is str:
            self.chars -= len(v)
            if self.chars < 0:
                return self.refuse(f"expands to more than {self.max_chars} characters")
            return v  # type: ignore[no-any-return]
        if t is bool or t is int or v is None:
            return v  # type: ignore[no-any-return]
        if t is float:
            # NaN and the infinities are not JSON: written as their name, so every output
            # line stays parseable.
            return v if math.isfinite(v) else repr(v)
        if t in (bytes, bytearray):
            self.chars -= 3 + 4 * len(v)  # the worst case of the repr written for it
            if self.chars < 0:
                return self.refuse(f"expands to more than {self.max_chars} characters")
            return safe_repr(bytes(v))
        if t is dict or t in (list, tuple, set, frozenset):
            if depth >= self.max_depth:
                return self.refuse(f"nested deeper than {self.max_depth} levels")
            if t is dict:
                out: dict[str, Any] = {}
                for k, item in v.items():
                    out[self.key(k)] = self.value(item, depth + 1)
                return out
            return [self.value(item, depth + 1) for item in v]
        return self.refuse(f"a value of type {t.__name__}")

    def items(self, d: dict[Any, Any]) -> dict[str, Any]:
        """The record's own fields, the common scalars inline (this runs per record)."""
        out: dict[str, Any] = {}
        for raw, item in d.items():
            if type(raw) is str:
                self.chars -= len(raw)
                k = raw
            elif self.strict:
                raise ShapeError(f"refused record: a {type(raw).__name__} key at the top level")
            else:
                k = self.key(raw)
            t = type(item)
            if t is str and self.nodes > 0 and self.chars >= len(item):
                self.nodes -= 1
                self.chars -= len(item)
                out[k] = item
            elif (t is int or t is bool or item is None) and self.nodes > 0:
                self.nodes -= 1
                out[k] = item
            else:
                out[k] = self.value(item, 1)
        if self.chars < 0:
            self.refuse(f"expands to more than {self.max_chars} characters")
        return out

    def key(self, k: Any) -> str:
        # As json.dumps writes them: the scalars a JSON object may be keyed by become text.
        t = type(k)
        if t is str:
            self.chars -= len(k)
            if self.chars < 0:
                return self.refuse(f"expands to more than {self.max_chars} characters")
            return k  # type: ignore[no-any-return]
        if t is bool or k is None:
            return "true" if k is True else "false" if k is False else "null"
        if t is int or t is float:
            return repr(k) if t is float else str(k)
        return self.refuse(f"a {t.__name__} as a key")


def jsonable(
    value: Any, *, strict: bool = True, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES,
    max_chars: int = 2 * 1024 * 1024,
) -> dict[str, Any]:
    """*value* (a decoded record) as a new JSON-ready dict with str keys.

    Tuples and sets become lists, bytes their ``repr``, non-finite floats their name.
    Bounds: *max_depth* levels of nesting (the record itself is level 1), *max_nodes*
    values and *max_chars* characters of text in the expanded record (an object
    referenced twice counts twice; a cycle is infinitely deep). The walk is recursive but
    never deeper than *max_depth*, and stops as soon as a bound is crossed.

    Raises:
        ShapeError: (``strict=True``) *value* is not a dict with str keys, or crosses
            a bound. With ``strict=False`` the offending parts are replaced by a
            ``"<mplog: ...>"`` placeholder instead, and only a non-dict is refused.
    """
    if type(value) is not dict:
        raise ShapeError(f"refused record: a {type(value).__name__}, not a dict")
    return _Walk(strict, max_depth, max_nodes, max_chars).items(value)


def decode_record(data: bytes, *, max_chars: int = 2 * 1024 * 1024) -> dict[str, Any]:
    """One stdlib-wire frame body -> a JSON-ready record dict (``loads`` + ``jsonable``).

    The expanded record is bounded by the frame's own length as well as by *max_chars*
    and :data:`MAX_NODES`: at most ``len(data) + 64`` values and ``4 * len(data) + 256``
    characters. Every value takes at least one opcode byte and every character one byte
    of UTF-8 unless the memo shares it, so a record the stdlib wrote is far inside these;
    what they bound is how much a frame of shared references can expand (a read of
    256 KiB of frames writes a few MiB at most, not gigabytes).

    Raises:
        ProtocolError: anything :func:`loads` or :func:`jsonable` refuses.
    """
    return jsonable(
        loads(data),
        max_nodes=min(MAX_NODES, len(data) + 64),
        max_chars=min(max_chars, 4 * len(data) + 256),
    )
