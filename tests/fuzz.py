"""A property-based fuzzer for clipkit's readers: mutated real checkpoints load, or fail with a ClipkitError.

Hypothesis draws *mutation plans* (plain data: which file of a seed, which
bytes, pickle opcodes, JSON values or zip entries to change); each plan is
applied to a real checkpoint from ``fuzz_seeds`` (torch zip, legacy pickle,
TorchScript archive, safetensors, a sharded folder, open_clip and transformers
folders with their side configs). The mutated checkpoints of a round are then
loaded, all of them, in one sandboxed child (``sandbox.run_cases``: an
address-space limit, each case's peak RSS measured, a crash reported and the
rest run on). The property: every outcome is a successful load or a
``ClipkitError`` — never another exception, a crash, or memory beyond
``RSS_BOUND_KB``.

Short runs are part of the test suite (``tests/test_fuzz.py``); a long run::

    python -m tests.fuzz --minutes 10 [--keep DIR]

prints the cases tried per kind, the failures (each failing case is kept with
its plan), and the time taken.
"""

from __future__ import annotations

import argparse
import io
import json
import pickletools
import random
import shutil
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_seeds import Seed, build_seeds  # noqa: E402
from sandbox import run_cases  # noqa: E402

RSS_BOUND_KB = 768 * 1024  # a tiny checkpoint's load costs ~200 MiB; a mutation may not cost much more
INTERESTING_INTS = [0, 1, -1, 2, 7, 255, 256, 65535, 2**31 - 1, 2**31, -(2**31), 2**32, 4_000_000, 2**62, 2**63 - 1,
                    -(2**63), 2**64, 2**5000]
GLOBALS = ["torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor_v3", "torch._utils _rebuild_parameter",
           "torch FloatStorage", "torch HalfStorage", "torch.storage UntypedStorage", "torch Size", "torch device",
           "collections OrderedDict", "numpy dtype", "numpy.core.multiarray _reconstruct",
           "numpy._core.multiarray scalar", "numpy ndarray", "builtins set", "builtins eval", "os system",
           "_codecs encode", "torch.nn.parameter Parameter", "torch._tensor _rebuild_from_type_v2",
           "torch.jit._pickle build_intlist", "__torch__.torch.nn.modules.linear Linear", "torch float16"]

# -- plans ------------------------------------------------------------------------------------------------

_positions = st.integers(min_value=0, max_value=2**32)
_small_bytes = st.one_of(st.binary(min_size=1, max_size=16),
                         st.sampled_from(INTERESTING_INTS).map(lambda v: (v % 2**64).to_bytes(8, "little")))
byte_op = st.one_of(
    st.tuples(st.just("flip"), _positions, st.integers(0, 255)),
    st.tuples(st.just("set"), _positions, _small_bytes),
    st.tuples(st.just("insert"), _positions, _small_bytes),
    st.tuples(st.just("delete"), _positions, st.integers(1, 64)),
    st.tuples(st.just("dup"), _positions, st.integers(1, 256), st.integers(1, 64)),
    st.tuples(st.just("truncate"), _positions),
)
_int_values = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-(2**70), 2**70))
pickle_op = st.one_of(
    st.tuples(st.just("int"), _positions, _int_values),
    st.tuples(st.just("str"), _positions, st.one_of(st.sampled_from(["", "0", "../x", "/etc/passwd", "storage", "cpu",
                                                                     "cuda:0", "state_dict", "a" * 300]),
                                                     st.text(max_size=12))),
    st.tuples(st.just("global"), _positions, st.sampled_from(GLOBALS)),
    st.tuples(st.just("bytes"), byte_op),
)
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), _int_values, st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=10), st.sampled_from(["F16", "F32", "BF16", "I64", "BOOL", "F64", "U8", "X9",
                                                     "gelu", "quick_gelu", "../x", "/abs/x.safetensors"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
json_op = st.one_of(
    st.tuples(st.just("set"), _positions, json_value),
    st.tuples(st.just("delete"), _positions),
    st.tuples(st.just("deep"), _positions, st.integers(1, 3000)),
    st.tuples(st.just("bytes"), byte_op),
)


def plan_for(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """The strategy of mutation plans for one kind of seed."""
    ops = st.lists(st.one_of(pickle_op, st.tuples(st.just("bytes"), byte_op)), min_size=1, max_size=4)
    if kind in ("torch-zip", "torchscript", "release"):
        return st.fixed_dictionaries({"entry": _positions, "ops": ops, "deflate": st.lists(_positions, max_size=3),
                                      "raw": st.lists(byte_op, max_size=2)})
    if kind == "legacy":
        return st.fixed_dictionaries({"ops": ops})
    jops = st.lists(json_op, min_size=1, max_size=3)
    return st.fixed_dictionaries({"file": _positions, "json": jops, "raw": st.lists(byte_op, max_size=2)})


def draw_plans(kind: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` plans for ``kind`` drawn by Hypothesis (generation only: the property is checked in the sandbox)."""
    plans: list[dict[str, Any]] = []

    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(plan_for(kind))
    def collect(plan: dict[str, Any]) -> None:
        plans.append(plan)

    hypothesis_seed(seed)(collect)()
    return plans


# -- applying a plan ------------------------------------------------------------------------------------------


def apply_bytes(data: bytes, op: tuple) -> bytes:
    """One byte-level mutation of ``data``."""
    if not data:
        return bytes(op[2]) if op[0] in ("set", "insert") else data
    kind, pos = op[0], op[1] % len(data)
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (op[2] or 1)]) + data[pos + 1 :]
    if kind == "set":
        return data[:pos] + op[2] + data[pos + len(op[2]) :]
    if kind == "insert":
        return data[:pos] + op[2] + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + op[2] :]
    if kind == "dup":
        return data[:pos] + data[pos : pos + op[2]] * op[3] + data[pos:]
    return data[:pos]  # truncate


def _encode_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return (b"\x8a" + bytes([len(raw)]) if len(raw) < 256 else b"\x8b" + struct.pack("<i", len(raw))) + raw


def _encode_str(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _opcodes(data: bytes, names: set[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of every opcode named in ``names`` across the pickles at the start of ``data``."""
    found: list[tuple[int, int]] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            ops = list(pickletools.genops(stream))
            for (op, _, pos), nxt in zip(ops, [*ops[1:], (None, None, stream.tell())]):
                if op.name in names:
                    found.append((pos, nxt[2]))
    except Exception:  # noqa: BLE001 - raw storage bytes follow the pickles
        pass
    return found


def apply_pickle(data: bytes, op: tuple) -> bytes:
    """One opcode-aware mutation of a pickle (or a legacy file's pickles): an int, a string or a global replaced."""
    if op[0] == "bytes":
        return apply_bytes(data, op[1])
    names = {"int": {"BININT", "BININT1", "BININT2", "LONG1"}, "str": {"BINUNICODE", "SHORT_BINUNICODE"},
             "global": {"GLOBAL"}}[op[0]]
    spots = _opcodes(data, names)
    if not spots:
        return data
    start, end = spots[op[1] % len(spots)]
    new = {"int": _encode_int, "str": _encode_str, "global": lambda g: b"c" + g.replace(" ", "\n").encode() + b"\n"}
    return data[:start] + new[op[0]](op[2]) + data[end:]


def _mutate_zip(source: Path, dest: Path, plan: dict[str, Any]) -> None:
    with zipfile.ZipFile(source) as zin:
        infos = zin.infolist()
        contents = [zin.read(info) for info in infos]
    target = plan["entry"] % len(infos)
    for op in plan["ops"]:
        if infos[target].filename.endswith(".pkl"):
            contents[target] = apply_pickle(contents[target], op)
        else:
            contents[target] = apply_bytes(contents[target], op[1] if op[0] == "bytes" else ("flip", op[1], 1))
    deflated = {d % len(infos) for d in plan["deflate"]}
    with zipfile.ZipFile(dest, "w") as zout:
        for i, (info, data) in enumerate(zip(infos, contents)):
            method = zipfile.ZIP_DEFLATED if i in deflated else zipfile.ZIP_STORED
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), data, compress_type=method)
    raw = dest.read_bytes()
    for op in plan["raw"]:
        raw = apply_bytes(raw, op)
    dest.write_bytes(raw)


def _json_nodes(value: Any, path: tuple = ()) -> list[tuple]:
    nodes = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            nodes += _json_nodes(inner, (*path, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            nodes += _json_nodes(inner, (*path, i))
    return nodes


def apply_json(doc: Any, op: tuple) -> Any:
    """One structural mutation of a parsed JSON document: a node set, deleted, or replaced by deep nesting."""
    nodes = _json_nodes(doc)
    path = nodes[op[1] % len(nodes)]
    new = op[2] if op[0] == "set" else json.loads("[" * op[2] + "]" * op[2]) if op[0] == "deep" and op[2] < 900 \
        else ("DEEP", op[2]) if op[0] == "deep" else None
    if not path:
        return doc if op[0] == "delete" else new
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if op[0] == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


def _dump(doc: Any) -> str:
    text = json.dumps(doc, allow_nan=True)
    while '["DEEP", ' in text:  # nesting too deep for json.dumps: spliced in as text
        head, _, rest = text.partition('["DEEP", ')
        depth, _, tail = rest.partition("]")
        text = head + "[" * int(depth) + "]" * int(depth) + tail
    return text


def _mutate_safetensors(data: bytes, ops: list[tuple]) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    for op in ops:
        if op[0] != "bytes":
            header = apply_json(header, op)
    text = _dump(header).encode()
    out = struct.pack("<Q", len(text)) + text + data[8 + length :]
    for op in ops:
        if op[0] == "bytes":
            out = apply_bytes(out, op[1])
    return out


def _mutate_folder(source: Path, dest: Path, plan: dict[str, Any]) -> None:
    shutil.copytree(source, dest)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    target = files[plan["file"] % len(files)]
    data = target.read_bytes()
    if target.suffix == ".json":
        try:
            doc: Any = json.loads(data)
            for op in plan["json"]:
                doc = apply_json(doc, op) if op[0] != "bytes" else doc
            data = _dump(doc).encode()
        except (ValueError, RecursionError, TypeError):
            pass
        for op in plan["json"]:
            data = apply_bytes(data, op[1]) if op[0] == "bytes" else data
    elif target.suffix == ".safetensors":
        data = _mutate_safetensors(data, plan["json"])
    for op in plan["raw"]:
        data = apply_bytes(data, op)
    target.write_bytes(data)


def materialise(seed: Seed, plan: dict[str, Any], dest: Path) -> Path:
    """Apply ``plan`` to a copy of ``seed`` at ``dest`` (a file or a folder) and return it."""
    if seed.kind in ("torch-zip", "torchscript", "release"):
        _mutate_zip(seed.path, dest, plan)
    elif seed.kind == "legacy":
        data = seed.path.read_bytes()
        for op in plan["ops"]:
            data = apply_pickle(data, op)
        dest.write_bytes(data)
    elif seed.kind == "safetensors":
        data = _mutate_safetensors(seed.path.read_bytes(), plan["json"])
        for op in plan["raw"]:
            data = apply_bytes(data, op)
        dest.write_bytes(data)
    else:
        _mutate_folder(seed.path, dest, plan)
    return dest


# -- running ------------------------------------------------------------------------------------------------


def is_failure(result: dict[str, Any] | None) -> bool:
    """Whether a sandbox result breaks the property (not ok and not a ClipkitError, or too much memory)."""
    if result is None:
        return True
    outcome = result["outcome"]
    return outcome.startswith(("other:", "crash:")) or result["rss_growth_kb"] > RSS_BOUND_KB


def fuzz_round(seeds: dict[str, Seed], work: Path, per_kind: int, rng_seed: int,
               with_seeds: bool = False) -> list[dict[str, Any]]:
    """Draw ``per_kind`` plans for every seed, materialise them under ``work``, run them all; return the records.

    ``with_seeds`` also runs each seed unchanged (named ``<kind>-seed``, with an empty plan).
    """
    cases, plans = [], {}
    for kind, seed in seeds.items():
        if with_seeds:
            plans[f"{kind}-seed"] = (kind, {}, seed.path)
            cases.append({"name": f"{kind}-seed", "call": seed.call, "source": str(seed.path)})
        for i, plan in enumerate(draw_plans(kind, per_kind, rng_seed)):
            name = f"{kind}-{rng_seed}-{i}"
            dest = work / (name + (seed.path.suffix if seed.path.is_file() else ""))
            try:
                materialise(seed, plan, dest)
            except (ValueError, KeyError, IndexError, TypeError, RecursionError, OverflowError, zipfile.BadZipFile):
                continue  # a plan that does not apply to this seed
            plans[name] = (kind, plan, dest)
            cases.append({"name": name, "call": seed.call, "source": str(dest)})
    results = run_cases(cases, timeout=1800)
    return [{"name": c["name"], "kind": plans[c["name"]][0], "plan": plans[c["name"]][1], "path": plans[c["name"]][2],
             "result": results.get(c["name"])} for c in cases]


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fuzz --minutes N``: fuzz until the time is up; print cases, failures and time."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--per-kind", type=int, default=40, help="cases per seed kind in each round")
    parser.add_argument("--keep", type=Path, default=Path("fuzz-failures"), help="where failing cases are kept")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    import tempfile

    base = Path(args.work or tempfile.mkdtemp(prefix="clipkit-fuzz-"))
    try:
        return _run(args, base)
    finally:
        if args.work is None:  # a folder we made; one the caller named is theirs
            shutil.rmtree(base, ignore_errors=True)


def _run(args: argparse.Namespace, base: Path) -> int:
    """Build the seeds under ``base``, fuzz in rounds until ``args.minutes`` are up, print the figures."""
    seeds = build_seeds(base / "seeds", release=True)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    tried: dict[str, int] = {kind: 0 for kind in seeds}
    outcomes: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    round_no = 0
    while time.monotonic() < deadline:
        round_no += 1
        work = base / f"round-{round_no}"
        work.mkdir()
        for record in fuzz_round(seeds, work, args.per_kind, random.randrange(2**31)):
            tried[record["kind"]] += 1
            result = record["result"]
            label = "missing" if result is None else result["outcome"]
            outcomes[label] = outcomes.get(label, 0) + 1
            if is_failure(result):
                failures.append(record)
                keep = args.keep / record["name"]
                keep.mkdir(parents=True, exist_ok=True)
                copy = shutil.copytree if record["path"].is_dir() else shutil.copy
                copy(record["path"], keep / record["path"].name)
                (keep / "plan.json").write_text(json.dumps({"plan": record["plan"], "result": result}, default=repr))
        shutil.rmtree(work, ignore_errors=True)
        print(f"round {round_no}: {sum(tried.values())} cases, {len(failures)} failures, "
              f"{time.monotonic() - started:.0f} s", flush=True)
    elapsed = time.monotonic() - started
    print(f"cases tried: {sum(tried.values())} ({', '.join(f'{k} {v}' for k, v in tried.items())})")
    print(f"outcomes: {', '.join(f'{k} {v}' for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))}")
    print(f"failures: {len(failures)}" + (f" (kept in {args.keep})" if failures else ""))
    for record in failures[:20]:
        result = record["result"] or {}
        print(f"  {record['name']}: {result.get('outcome')} {str(result.get('message', ''))[:200]}")
    print(f"time: {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
