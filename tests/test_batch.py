"""Batch embedding and zero-shot classification with the local engine, on real photos and random weights."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import batch_fixtures as bf
import factories
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import clipkit  # noqa: E402
from clipkit import batch  # noqa: E402
from clipkit.errors import ConfigurationError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::clipkit.errors.AssumptionWarning")  # tiny random checkpoints
RUN = dict(device="cpu", batch_size=4, workers=2, shard_size=5, progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-vit.pt"
    factories.write_checkpoint(path, bf.TINY_FULL_VOCAB)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return clipkit.load(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Twelve photos, two of them one folder down, and three broken files among them."""
    folder = tmp_path_factory.mktemp("photos")
    files = bf.photo_bytes(12)
    bf.write_files(folder, files[:10])
    bf.write_files(folder / "more", files[10:])
    bf.write_files(folder, bf.broken_files())
    (folder / "README.md").write_text("not an image: not listed")
    return folder


@pytest.fixture(scope="module")
def embedded(photos, checkpoint, tmp_path_factory):
    dest = tmp_path_factory.mktemp("out") / "embeddings"
    return batch.embed_images(photos, dest, model=checkpoint, **RUN)


def test_local_embeddings_equal_encode_image_row_for_row(embedded, photos, model):
    table = embedded.read()
    paths = sorted(p for p in photos.rglob("*") if p.suffix in (".jpg", ".png"))
    assert table.column("id").to_pylist() == [str(p) for p in paths]
    assert table.column("index").to_pylist() == list(range(15))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), bf.TINY_FULL_VOCAB.embed_dim)
    good = [p for p in paths if not p.name.startswith("broken")]
    expected = bf.direct_image_embeddings(*model, good)
    np.testing.assert_allclose(bf.embedding_matrix(table), expected, rtol=0, atol=2e-6)
    assert np.allclose(np.linalg.norm(expected, axis=1), 1.0)
    assert embedded.shards == 3 and embedded.written == (0, 1, 2) and embedded.skipped == ()


def test_a_corrupt_file_lands_in_the_errors_and_the_run_goes_on(embedded):
    table = embedded.read().to_pylist()
    broken = {row["id"].rsplit("/", 1)[1]: row for row in table if row["error"] is not None}
    assert set(broken) == {"broken-empty.jpg", "broken-text.png", "broken-truncated.jpg"}
    assert all(row["embedding"] is None for row in broken.values())
    assert broken["broken-text.png"]["error"] == "UnidentifiedImageError: cannot identify image file"
    assert "truncated" in broken["broken-truncated.jpg"]["error"]
    assert sorted(error[0].rsplit("/", 1)[1] for error in embedded.errors) == sorted(broken)


def test_a_resumed_run_skips_written_shards_and_writes_the_same_table(embedded, photos, checkpoint, tmp_path):
    dest = tmp_path / "resumed"
    shutil.copytree(embedded.dest, dest)
    (dest / "part-00001.parquet").unlink()  # as if the run had stopped while writing shard 1
    (dest / ".part-00001.parquet.0badc0de.tmp").write_bytes(b"PAR1 half a shard")
    before = (dest / "part-00002.parquet").stat().st_mtime_ns
    result = batch.embed_images(photos, dest, model=checkpoint, **RUN)
    assert result.written == (1,) and result.skipped == (0, 2)
    assert (dest / "part-00002.parquet").stat().st_mtime_ns == before
    assert result.read().equals(embedded.read())
    assert sorted(p.name for p in dest.iterdir()) == ["_manifest.json", *(f"part-0000{k}.parquet" for k in range(3))]
    with pytest.raises(ConfigurationError, match="different run .*shard_size"):
        batch.embed_images(photos, dest, model=checkpoint, **{**RUN, "shard_size": 4})


def test_classify_top1_equals_a_direct_computation(photos, checkpoint, model, tmp_path):
    labels = ["astronaut", "cat", "cup of coffee", "rocket", "coins"]
    templates = ["a photo of a {}.", "a blurry picture of the {}."]
    result = batch.classify(photos, tmp_path / "cls", model=checkpoint, labels=labels, templates=templates,
                            top_k=3, **RUN)
    rows = [row for row in result.read().to_pylist() if row["error"] is None]
    net, preprocess = model
    tokenizer = clipkit.get_tokenizer(net)
    with torch.no_grad():
        weights = torch.stack([F.normalize(F.normalize(net.encode_text(tokenizer([t.format(label) for t in templates])),
                                                       dim=-1).mean(0), dim=-1) for label in labels])
        images = torch.from_numpy(bf.direct_image_embeddings(net, preprocess, [Path(row["id"]) for row in rows]))
        probs = (net.logit_scale.exp() * images @ weights.t()).softmax(dim=-1)
    assert [row["labels"][0] for row in rows] == [labels[i] for i in probs.argmax(dim=-1).tolist()]
    np.testing.assert_allclose([row["scores"] for row in rows], probs.topk(3).values.numpy(), atol=1e-5)
    assert {row["score_kind"] for row in rows} == {"softmax"} and result.score_kind == "softmax"
    assert all(len(row["labels"]) == 3 for row in rows)


def test_captions_and_tables_as_sources(photos, checkpoint, model, embedded, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n\na rocket on the launch pad\nan astronaut\n")
    table = batch.embed_texts(captions, tmp_path / "text", model=checkpoint, **RUN).read()
    assert table.column("id").to_pylist() == ["1", "3", "4"]
    net, _ = model
    with torch.no_grad():
        expected = F.normalize(net.encode_text(clipkit.get_tokenizer(net)(table.column("text").to_pylist())), dim=-1)
    np.testing.assert_allclose(bf.embedding_matrix(table), expected.numpy(), atol=2e-6)

    listing = tmp_path / "listing.csv"  # relative paths, read from the table's folder
    rows = [str(p.relative_to(photos)) for p in sorted(photos.rglob("*.jpg"))]
    shutil.copytree(photos, tmp_path / "photos")
    listing.write_text("key,path\n" + "".join(f"k{n},photos/{row}\n" for n, row in enumerate(rows)))
    out = batch.embed_images(listing, tmp_path / "from-table", model=checkpoint, id_column="key", **RUN).read()
    by_name = {row["id"].rsplit("/", 1)[1]: row["embedding"] for row in embedded.read().to_pylist()}
    assert out.column("id").to_pylist() == [f"k{n}" for n in range(len(rows))]
    expected = [by_name[r.rsplit("/", 1)[-1]] for r in rows]
    assert [row["embedding"] is None for row in out.to_pylist()] == [e is None for e in expected]
    np.testing.assert_allclose(bf.embedding_matrix(out), [e for e in expected if e is not None], atol=2e-6)


def test_the_embed_and_classify_commands(photos, checkpoint, tmp_path, capsys):
    from clipkit.cli import main

    dest = tmp_path / "cli"
    assert main(["classify", str(photos), "--out", str(dest), "--model", str(checkpoint), "--device", "cpu",
                 "--labels", "cat", "rocket", "--top-k", "1", "--workers", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "classified 15 inputs" in out and "3 could not be read" in out and "broken-text.png" in out
    table = pq.read_table(dest)
    assert table.num_rows == 15 and set(table.column("score_kind").to_pylist()) == {"softmax"}
    assert main(["embed", str(photos / "nothing-here"), "--out", str(tmp_path / "none"),
                 "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipkit: error: ") and "nothing-here" in err and not (tmp_path / "none").exists()


@pytest.mark.parametrize(("module", "extra"), [("ray", "clipkit[ray]"), ("pyarrow", "clipkit[batch]")])
def test_a_missing_optional_dependency_names_its_extra(photos, checkpoint, tmp_path, monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(ConfigurationError, match=re.escape(f"pip install '{extra}'")):
        batch.embed_images(photos, tmp_path / "out", model=checkpoint, engine="ray", **RUN)
    assert not (tmp_path / "out").exists()


# -- the CPU split between decoding workers and the model ---------------------------------------------


def test_the_model_threads_are_the_setting_measured_faster(monkeypatch):
    from clipkit.batch import local

    monkeypatch.setattr(local, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        def run(governor, seconds_per_batch):
            """Feed batches whose time depends on the threads in use; return the threads used for each."""
            used = []
            for _ in range(2 * governor.RETRY):
                used.append(torch.get_num_threads())
                governor.after_batch(32, seconds_per_batch[torch.get_num_threads()])
            return used

        governor = local.ThreadGovernor(workers=1)
        assert (governor.low, governor.high) == (3, 4) and torch.get_num_threads() == 3
        used = run(governor, {3: 1.0, 4: 0.5})  # the model is the bottleneck: every thread helps
        assert used[1:3] == [3] * 2 and used[3:5] == [4] * 2  # one trial each (after the first batch)
        assert used[7:] .count(4) > 0.85 * len(used[7:])  # then the faster, trying the other now and then
        governor.restore()
        assert torch.get_num_threads() == 4

        used = run(local.ThreadGovernor(workers=1), {3: 0.5, 4: 1.0})  # threads spinning against the workers
        assert used[7:].count(3) > 0.85 * len(used[7:])
        torch.set_num_threads(4)

        fixed = local.ThreadGovernor(workers=3, threads=2)
        assert set(run(fixed, {2: 1.0})) == {2}
        assert local.ThreadGovernor(workers=8).low == 1  # never below one thread
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(local, "usable_cores", lambda: 64)
    assert local.default_workers() == 8


def test_a_cpu_run_sets_the_model_threads_and_restores_them(
        photos, checkpoint, tmp_path, monkeypatch):
    from clipkit.batch import local
    from clipkit.batch.compute import Encoder

    seen: list[int] = []
    shipped: list[torch.dtype] = []
    encode = Encoder.encode_images

    def recording(self, pixels):
        seen.append(torch.get_num_threads())
        shipped.append(pixels.dtype)
        return encode(self, pixels)

    monkeypatch.setattr(Encoder, "encode_images", recording)
    monkeypatch.setattr(local, "usable_cores", lambda: 3)
    monkeypatch.setattr(local.ThreadGovernor, "TRIAL", 10**6)  # no trial of the other setting in so short a run
    before = torch.get_num_threads()
    batch.embed_images(photos, tmp_path / "a", model=checkpoint, **{**RUN, "workers": 1})
    assert set(seen[1:]) == {max(1, min(before, 2))}  # 3 cores, 1 worker (the first call is Encoder's probe)
    assert set(shipped[1:]) == {torch.uint8}  # workers ship bytes; the batch is normalised where the model is
    assert torch.get_num_threads() == before
    seen.clear()
    batch.embed_images(photos, tmp_path / "b", model=checkpoint, **{**RUN, "workers": 1, "threads": 1})
    assert set(seen[1:]) == {1} and torch.get_num_threads() == before
    with pytest.raises(ConfigurationError, match="threads must be at least 1"):
        batch.embed_images(photos, tmp_path / "c", model=checkpoint, **{**RUN, "threads": 0})


def test_a_transform_without_the_split_runs_whole_in_the_workers():
    from clipkit.batch.compute import split_preprocess

    def plain(image):
        return torch.zeros(3, 8, 8)

    assert split_preprocess(plain) == (plain, None)


def test_the_default_preprocess_splits_into_pixels_and_normalize(model):
    from clipkit.batch.compute import split_preprocess

    _, preprocess = model
    assert split_preprocess(preprocess) == (preprocess.to_pixels, preprocess.normalize)
