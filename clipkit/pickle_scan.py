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

__all__ = ["MAX_INT_BITS", "MAX_PICKLE_BYTES", "MAX_PICKLE_OPS", "scan_pickle"]

MAX_PICKLE_BYTES = 256 * 1024 * 1024  # the pickle itself; tensor data lives outside it
MAX_PICKLE_OPS = 8_000_000  # a state dict needs about thirty opcodes a tensor
MAX_INT_BITS = 4096  # sizes, offsets and counters; far larger ints only slow down whatever prints them

_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_GROW = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # the first item is the container


def scan_pickle(source: bytes | BinaryIO, *, what: str) -> int:
    """Check one pickle stream in ``source`` (bytes, or a binary file at the stream's start) without unpickling it.

    Returns the offset just past its ``STOP`` (relative to where it started).
    Raises ``CheckpointError`` naming ``what`` when the stream is malformed,
    longer than ``MAX_PICKLE_BYTES`` or ``MAX_PICKLE_OPS`` opcodes, holds an
    integer wider than ``MAX_INT_BITS``, or nests containers deeper than
    ``clipkit.limits.MAX_NESTING``.
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else _Bounded(source)
    start = stream.tell()
    stack: list[int] = []  # the nesting depth of each value on the pickle's stack
    marks: list[int] = []
    memo: dict[object, int] = {}
    ops = 0
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
            _step(opcode, arg, stack, marks, memo)
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
          memo: dict[object, int]) -> None:
    name = opcode.name
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
        _apply(opcode, stack, marks)


def _apply(opcode: pickletools.OpcodeInfo, stack: list[int], marks: list[int]) -> None:
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
