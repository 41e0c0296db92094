"""The fuzzer's CI budget: a few dozen mutations of every checkpoint format, each loads or raises a ClipkitError.

The long run is ``python -m tests.fuzz --minutes N``; here one short round
(a fixed Hypothesis seed, so CI is repeatable) runs in a sandboxed child, and
the mutation machinery itself is checked to produce files that differ from
their seeds in the ways it says.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest

import fuzz
from fuzz_seeds import build_seeds

PER_KIND = 10  # cases per format: seven formats in one child stay within about a minute


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory):
    return build_seeds(tmp_path_factory.mktemp("seeds"))


def test_a_short_fuzz_round_finds_only_loads_and_clipkit_errors(seeds, tmp_path: Path) -> None:
    records = fuzz.fuzz_round(seeds, tmp_path, PER_KIND, rng_seed=20261201, with_seeds=True)
    unchanged = {r["kind"]: r["result"]["outcome"] for r in records if r["name"].endswith("-seed")}
    assert unchanged == {kind: "ok" for kind in seeds}, "every seed must load cleanly before it is mutated"
    assert len({r["kind"] for r in records}) == len(seeds)
    assert len(records) >= PER_KIND * len(seeds) // 2
    failures = [(r["name"], r["plan"], r["result"]) for r in records if fuzz.is_failure(r["result"])]
    assert not failures, json.dumps(failures[:3], default=repr, indent=1)
    assert any(r["result"]["outcome"] != "ok" for r in records), "no mutation was refused: the fuzzer is not biting"


def test_pickle_mutations_replace_whole_opcodes() -> None:
    data = pickle.dumps({"size": (3, 4), "key": "0"}, protocol=2)
    bigger = fuzz.apply_pickle(data, ("int", 0, 2**40))
    assert pickle.loads(bigger)["size"][0] == 2**40
    renamed = fuzz.apply_pickle(data, ("str", 2, "../x"))
    assert "../x" in pickle.loads(renamed).values()


def test_zip_plans_can_deflate_entries_and_keep_the_zip_valid(seeds, tmp_path: Path) -> None:
    plan = {"entry": 0, "ops": [("bytes", ("flip", 0, 0))], "deflate": [1, 2], "raw": []}
    out = fuzz.materialise(seeds["torch-zip"], plan, tmp_path / "m.pt")
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def test_json_plans_can_nest_beyond_the_limit(seeds, tmp_path: Path) -> None:
    plan = {"file": 0, "json": [("deep", 1, 2500)], "raw": []}
    out = fuzz.materialise(seeds["open_clip"], plan, tmp_path / "oc")
    text = (out / "open_clip_config.json").read_text()
    assert "[" * 2500 in text


def test_the_sandbox_reports_a_crash_and_runs_the_rest(seeds) -> None:
    from sandbox import run_cases

    results = run_cases([{"name": "crash", "call": "segfault", "source": ""},
                         {"name": "after", "call": "read", "source": str(seeds["safetensors"].path)}])
    assert results["crash"]["outcome"] == "crash:signal 11" and results["crash"]["status"] == -11
    assert results["after"]["outcome"] == "ok" and fuzz.is_failure(results["crash"])
