"""A cheap opcode scan that bounds a pickle's size, length and nesting before it is unpickled.

Unpickling builds whatever the opcodes say: a tuple nested a million deep is
a megabyte of opcodes, and code that later walks, prints or frees it can
overflow the C stack. ``scan_pickle`` walks the opcodes with
``pickletools.genops`` (no object is built) while it tracks how deeply each
value on the pickle's stack nests, and refuses the stream with a
``CheckpointError`` when it is longer, or nests deeper, than any checkpoint
needs.
"""

from __future__ import annotations

import io
import pickletools
from typing import BinaryIO

from clipkit.errors import CheckpointError
from clipkit.limits import MAX_NESTING

__all__ = ["MAX_INT_BITS", "MAX_PICKLE_BYTES", "MAX_PICKLE_OPS", "object_limits", "scan_pickle"]

MAX_PICKLE_BYTES = 256 * 1024 * 1024  # the pickle itself; tensor data lives outside it
MAX_PICKLE_OPS = 8_000_000  # a state dict needs about thirty opcodes a tensor
MAX_INT_BITS = 4096  # sizes, offsets and counters; far larger ints only slow down whatever prints them
#: objects built (each tensor record is a REDUCE or two) and container entries, per byte of the file:
#: a memoised zero-size tensor view costs 14 pickle bytes and no tensor data but ~350 bytes of memory,
#: so their count is bounded by the file's size (a real checkpoint holds a few thousand tensors)
MIN_OBJECTS, BYTES_PER_OBJECT = 20_000, 1024
MIN_ENTRIES, BYTES_PER_ENTRY = 200_000, 64
_BUILDS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BUILD"}

_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_GROW = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # the first item is the container


def object_limits(file_size: int) -> tuple[int, int]:
    """How many objects (tensor records and other built values) and container entries a pickle in a file of
    ``file_size`` bytes may make: a fixed floor, or more in proportion to the file."""
    return max(MIN_OBJECTS, file_size // BYTES_PER_OBJECT), max(MIN_ENTRIES, file_size // BYTES_PER_ENTRY)


def scan_pickle(source: bytes | BinaryIO, *, what: str, file_size: int = 0) -> int:
    """Check one pickle stream in ``source`` (bytes, or a binary file at the stream's start) without unpickling it.

    Returns the offset just past its ``STOP`` (relative to where it started).
    Raises ``CheckpointError`` naming ``what`` when the stream is malformed,
    longer than ``MAX_PICKLE_BYTES`` or ``MAX_PICKLE_OPS`` opcodes, holds an
    integer wider than ``MAX_INT_BITS``, nests containers deeper than
    ``clipkit.limits.MAX_NESTING``, or builds more objects (tensor records) or
    container entries than ``object_limits(file_size)`` allows: many views of
    one storage need no tensor bytes, so the byte budget alone does not bound them.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: io.BytesIO | _Bounded = io.BytesIO(source)
    elif type(source) is io.BytesIO:  # exactly: a subclass could read differently
        stream = source  # in memory already: a read never allocates past what is there
    else:
        stream = _Bounded(source)
    start = stream.tell()
    stack: list[int] = []  # the nesting depth of each value on the pickle's stack
    marks: list[int] = []
    memo: dict[object, int] = {}
    ops = 0
    counts = [0, 0]  # objects built, container entries added
    limits = object_limits(file_size)
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            ops += 1
            if ops > MAX_PICKLE_OPS or (pos or 0) - start > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"{what} is a pickle of over {MAX_PICKLE_OPS} opcodes or {MAX_PICKLE_BYTES} bytes; "
                    "no checkpoint needs that many: the file is damaged or crafted"
                )
            if isinstance(arg, int) and arg.bit_length() > MAX_INT_BITS:
                raise CheckpointError(
                    f"{what} holds an integer of {arg.bit_length()} bits; no checkpoint needs one: the file is crafted"
                )
            _step(opcode, arg, stack, marks, memo, counts)
            for count, limit, kind in zip(counts, limits, ("objects (tensor records)", "container entries")):
                if count > limit:
                    raise CheckpointError(
                        f"{what} builds over {limit} {kind} in a file of {file_size} bytes (the limit for its size); "
                        "no checkpoint needs that many (a real one holds a few thousand tensors): the file is crafted"
                    )
            if stack and stack[-1] > MAX_NESTING:
                raise CheckpointError(
                    f"{what} nests values more than {MAX_NESTING} levels deep; no checkpoint does, "
                    "and unpickling it could crash the process: the file is damaged or crafted"
                )
    except CheckpointError:
        raise
    except (ValueError, IndexError, KeyError, EOFError, MemoryError) as exc:
        raise CheckpointError(
            f"{what} could not be read as data: it is not a well-formed pickle ({exc}); "
            "the file is truncated or damaged"
        ) from exc
    return stream.tell() - start


class _Bounded:
    """A file as ``genops`` reads it, never asked for more than the bytes left: a length field of 3 GB in a
    700 KB file must not make ``read`` allocate 3 GB before it finds out."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        here = file.tell()
        self.end = file.seek(0, io.SEEK_END)
        file.seek(here)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        left = max(0, self.end - self.file.tell())
        return self.file.read(left if size is None or size < 0 else min(size, left))

    def readline(self, size: int = -1) -> bytes:
        return self.file.readline(min(1 << 20, size) if size is not None and size >= 0 else 1 << 20)


def _step(opcode: pickletools.OpcodeInfo, arg: object, stack: list[int], marks: list[int],
          memo: dict[object, int], counts: list[int]) -> None:
    name = opcode.name
    if name in _BUILDS:
        counts[0] += 1
    if name == "MARK":
        marks.append(len(stack))
    elif name in _PUT:
        memo[arg] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in _GET:
        stack.append(memo[arg])
    elif name == "DUP":
        stack.append(stack[-1])
    elif name == "POP":
        stack.pop()
    elif name == "POP_MARK":
        del stack[marks.pop():]
    elif opcode.stack_before or opcode.stack_after:
        counts[1] += _apply(opcode, stack, marks)


def _apply(opcode: pickletools.OpcodeInfo, stack: list[int], marks: list[int]) -> int:
    """Apply ``opcode``'s effect on the nesting depths; returns how many entries it added to a container."""
    before = opcode.stack_before
    popped: list[int] = []
    if pickletools.markobject in before:
        mark = marks.pop()
        if mark > len(stack):
            raise IndexError("a mark past the stack's top")
        popped = stack[mark:]
        del stack[mark:]
        fixed = before.index(pickletools.markobject)
    else:
        fixed = len(before)
    if fixed > len(stack):
        raise IndexError(f"{opcode.name} on a stack of {len(stack)} values")
    if fixed:
        popped = stack[-fixed:] + popped
        del stack[-fixed:]
    if opcode.name in _GROW:
        depth = max([popped[0], *(d + 1 for d in popped[1:])])
    else:
        depth = max(popped, default=0) + 1
    stack.extend([depth] * len(opcode.stack_after))
    return len(popped) - 1 if opcode.name in _GROW else 0
