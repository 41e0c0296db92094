"""The example scripts run end to end, as a user runs them, on tiny random official-layout checkpoints.

Each example is started as ``python examples/<name>.py ...`` in a subprocess,
against checkpoints written by ``factories`` (the tiny architectures, with
CLIP's full vocabulary so real tokenizer output fits), and its printed output
or files are checked against what the same model computes in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipkit
import factories

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
skimage_data = pytest.importorskip("skimage.data")
PHOTOS = Path(skimage_data.data_dir)
SAMPLE = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
DEFAULT_LABEL_COUNT = 8  # examples/zero_shot.py DEFAULT_LABELS


def run_example(name: str, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>.py`` with ``args`` in a fresh interpreter; raise with its output if it fails."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{name}.py exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


class ExampleRuns:
    """Example invocations started up front and run concurrently (one per core); tests wait for their own.

    Each job is a list of ``(example, *args)`` commands run in order (a query
    after the index it reads); ``result(job)`` returns their completed processes.
    """

    def __init__(self, jobs: dict[str, list[tuple[object, ...]]], env: dict[str, str]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        self.futures = {
            job: self.pool.submit(lambda cmds=commands: [run_example(*cmd, env=env) for cmd in cmds])
            for job, commands in jobs.items()
        }

    def result(self, job: str) -> list[subprocess.CompletedProcess[str]]:
        return self.futures[job].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's scratch folder: checkpoints, a photo folder, outputs."""
    return tmp_path_factory.mktemp("examples")


@pytest.fixture(scope="module")
def checkpoints(work: Path) -> dict[str, Path]:
    """Tiny ViT and ResNet checkpoints (fp16 official layout) with the tokenizer's 49408-token vocabulary."""
    paths = {}
    for name, config in (("vit", factories.TINY_VIT), ("resnet", factories.TINY_RESNET)):
        paths[name] = work / f"tiny-{name}.pt"
        factories.write_checkpoint(paths[name], config.with_(vocab_size=49408), seed=3)
    return paths


@pytest.fixture(scope="module")
def photo_folder(work: Path) -> Path:
    """A folder of five real photos (one grayscale) with a nested subfolder and a non-image file."""
    folder = work / "photos"
    (folder / "more").mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    shutil.copy(PHOTOS / "astronaut.png", folder / "more" / "astronaut.png")
    shutil.copy(PHOTOS / "camera.png", folder / "more" / "camera.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def image_folder_dataset(work: Path) -> Path:
    """ImageFolder layout: two classes (crops of two photos), six images each."""
    data = work / "imagefolder"
    for cls, photo in (("cat", "chelsea.png"), ("rocket", "rocket.jpg")):
        (data / cls).mkdir(parents=True)
        with Image.open(PHOTOS / photo) as image:
            w, h = image.size
            for i in range(6):
                box = (i * w // 12, i * h // 12, w // 2 + i * w // 12, h // 2 + i * h // 12)
                image.crop(box).save(data / cls / f"{i}.png")
    return data


ENSEMBLE = ("a photo of a {}.", "a drawing of a {}.", "itap of the {}")
CAPTIONS = "a cat on a sofa\n\na rocket lifting off\n" + "a very long caption " * 20 + "\n"


@pytest.fixture(scope="module")
def runs(work: Path, checkpoints: dict[str, Path], photo_folder: Path, image_folder_dataset: Path):
    """Every example invocation the tests check, started at once and run concurrently."""
    vit, resnet = checkpoints["vit"], checkpoints["resnet"]
    (work / "captions.txt").write_text(CAPTIONS)
    cpu = ("--device", "cpu")
    index = work / "photos.idx.pt"
    templates = [arg for t in ENSEMBLE for arg in ("--template", t)]
    jobs: dict[str, list[tuple[object, ...]]] = {
        "zero_shot_samples": [("zero_shot", *templates, "--model", vit, *cpu, "--top-k", DEFAULT_LABEL_COUNT)],
        "zero_shot_json": [("zero_shot", PHOTOS / "chelsea.png", PHOTOS / "camera.png", "--labels", *ZS_LABELS,
                            "--model", resnet, *cpu, "--json")],
        "features_pt": [("extract_features", photo_folder, "--texts", work / "captions.txt",
                         "--output", work / "out" / "features.pt", "--model", vit, *cpu, "--batch-size", 2)],
        "features_npy": [("extract_features", photo_folder / "chelsea.png", photo_folder / "more",
                          "--output", work / "images.npy", "--model", resnet, *cpu)],
        "features_npy_both": [("extract_features", PHOTOS / "chelsea.png", "--texts", work / "captions.txt",
                               "--output", work / "both.npy", "--model", vit, *cpu)],
        "probe_synthetic": [("linear_probe", "--views", 6, "--c-values", 0.1, 1, 10, "--max-iter", 100,
                             "--report", work / "probe-synthetic.json", "--model", vit, *cpu)],
        "probe_folder": [("linear_probe", "--data", image_folder_dataset, "--c-values", 1, "--max-iter", 100,
                          "--report", work / "probe-folder.json", "--model", resnet, *cpu)],
        "search": [
            ("similarity_search", "index", photo_folder, "--index", index, "--model", vit, *cpu),
            ("similarity_search", "query", "--index", index, "--image", photo_folder / "coffee.png",
             "-k", 3, "--json", *cpu),
            ("similarity_search", "query", "--index", index, "--text", "a cup of coffee", "-k", 4, *cpu),
        ],
        "plugin": [("custom_plugin", "--output", work / "plugin", *cpu)],
        "missing_model": [("zero_shot", "--model", work / "no-such-checkpoint.pt", *cpu)],
    }
    # offline, with a private cache: the examples get local checkpoints only; one thread each, as they run side by side
    env = {**os.environ, "CLIPKIT_CACHE": str(work / "cache"), "CLIPKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = ExampleRuns(jobs, env)
    yield started
    started.close()


def normalised(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


# -- zero_shot.py ---------------------------------------------------------------------------------

LINE = re.compile(r"^(?P<image>\S+): (?P<ranked>.+)$")
ENTRY = re.compile(r"^(?P<label>.+) (?P<p>\d\.\d{4})$")
ZS_LABELS = ("cat", "cup of coffee", "rocket")


def test_zero_shot_prints_a_probability_distribution_per_sample_photo(runs: ExampleRuns) -> None:
    (result,) = runs.result("zero_shot_samples")
    header, *lines = result.stdout.strip().splitlines()
    assert header == f"scores: softmax over the {DEFAULT_LABEL_COUNT} labels (they sum to 1)"
    assert [LINE.match(line)["image"] for line in lines] == list(SAMPLE)
    for line in lines:
        entries = [ENTRY.match(part) for part in LINE.match(line)["ranked"].split(", ")]
        probs = [float(e["p"]) for e in entries]
        assert len({e["label"] for e in entries}) == DEFAULT_LABEL_COUNT
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert probs == sorted(probs, reverse=True)


def test_zero_shot_ensemble_averages_prompt_embeddings(runs: ExampleRuns, checkpoints: dict[str, Path]) -> None:
    (result,) = runs.result("zero_shot_samples")
    printed = {}
    for line in result.stdout.strip().splitlines()[1:]:  # after the "scores: softmax ..." line
        match = LINE.match(line)
        printed[match["image"]] = {e["label"]: float(e["p"]) for e in map(ENTRY.match, match["ranked"].split(", "))}
    labels = list(printed["chelsea.png"])
    model, preprocess = clipkit.load(checkpoints["vit"], device="cpu")
    with torch.no_grad():
        images = normalised(model.encode_image(torch.stack([preprocess(Image.open(PHOTOS / n)) for n in SAMPLE])))
        classes = []
        for label in labels:
            tokens = clipkit.tokenize([t.format(label) for t in ENSEMBLE], context_length=model.context_length)
            classes.append(normalised(normalised(model.encode_text(tokens)).mean(dim=0)))
        expected = (model.logit_scale.exp() * images @ torch.stack(classes).T).softmax(dim=-1)
    got = torch.tensor([[printed[name][label] for label in labels] for name in SAMPLE])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_zero_shot_reports_a_missing_checkpoint_in_one_line(runs: ExampleRuns, work: Path) -> None:
    with pytest.raises(AssertionError) as failure:
        runs.result("missing_model")
    message = str(failure.value)
    assert "zero_shot.py exited 1" in message
    assert f"CheckpointNotFoundError: checkpoint not found: {work / 'no-such-checkpoint.pt'}" in message
    assert "Traceback" not in message


def test_zero_shot_matches_the_models_own_logits(runs: ExampleRuns, checkpoints: dict[str, Path]) -> None:
    (result,) = runs.result("zero_shot_json")
    images = [PHOTOS / "chelsea.png", PHOTOS / "camera.png"]
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [row["image"] for row in rows] == [str(p) for p in images]
    assert all(list(row["probs"]) == list(ZS_LABELS) and row["score"] == "softmax" for row in rows)

    model, preprocess = clipkit.load(checkpoints["resnet"], device="cpu")
    pixels = torch.stack([preprocess(Image.open(p)) for p in images])
    tokens = clipkit.tokenize([f"a photo of a {label}." for label in ZS_LABELS], context_length=model.context_length)
    with torch.no_grad():
        expected = model(pixels, tokens)[0].softmax(dim=-1)
    got = torch.tensor([list(row["probs"].values()) for row in rows])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# -- extract_features.py ----------------------------------------------------------------------------


def test_extract_features_saves_unit_norm_features_with_names(
    runs: ExampleRuns, work: Path, checkpoints: dict[str, Path], photo_folder: Path
) -> None:
    runs.result("features_pt")
    saved = torch.load(work / "out" / "features.pt", weights_only=True)

    names = [Path(p).relative_to(photo_folder).as_posix() for p in saved["image_paths"]]
    assert names == ["chelsea.png", "coffee.png", "more/astronaut.png", "more/camera.png", "rocket.jpg"]
    assert saved["image_features"].shape == (5, factories.TINY_VIT.embed_dim)
    assert saved["text_features"].shape == (3, factories.TINY_VIT.embed_dim)
    assert saved["texts"][:2] == ["a cat on a sofa", "a rocket lifting off"]
    for key in ("image_features", "text_features"):
        assert saved[key].dtype == torch.float32
        torch.testing.assert_close(saved[key].norm(dim=-1), torch.ones(len(saved[key])))

    model, preprocess = clipkit.load(checkpoints["vit"], device="cpu")
    with torch.no_grad():
        image = normalised(model.encode_image(preprocess(Image.open(photo_folder / "more/camera.png"))[None]))
        text = normalised(model.encode_text(clipkit.tokenize(["a rocket lifting off"], context_length=16)))
    torch.testing.assert_close(saved["image_features"][3], image[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved["text_features"][1], text[0], atol=1e-5, rtol=1e-5)


def test_extract_features_npy_writes_a_matrix_and_its_names(runs: ExampleRuns, work: Path) -> None:
    runs.result("features_npy")
    matrix = np.load(work / "images.npy")
    names = (work / "images.txt").read_text().splitlines()
    assert matrix.shape == (3, factories.TINY_RESNET.embed_dim)
    assert [Path(n).name for n in names] == ["chelsea.png", "astronaut.png", "camera.png"]
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(matrix[0], matrix[1])


def test_extract_features_refuses_npy_for_two_modalities(runs: ExampleRuns, work: Path) -> None:
    with pytest.raises(AssertionError, match="npy holds one matrix"):
        runs.result("features_npy_both")
    assert not (work / "both.npy").exists()


# -- linear_probe.py ----------------------------------------------------------------------------------


def check_probe_report(report: dict, stdout: str, all_names: set[str]) -> None:
    test = report["test"]
    train, val = set(report["train"]), set(report["val"])
    held_out = {row["name"] for row in test}
    assert train and val and held_out
    assert not (train & val) and not (train & held_out) and not (val & held_out)
    assert train | val | held_out == all_names
    assert {row["label"] for row in test} == set(report["classes"])  # every class is tested
    correct = sum(row["label"] == row["predicted"] for row in test)
    assert report["test_accuracy"] == pytest.approx(correct / len(test))
    assert report["best_C"] == max(report["sweep"], key=lambda r: r["val_accuracy"])["C"]
    assert f"test accuracy {report['test_accuracy']:.4f} on {len(test)} held-out images" in stdout


def test_linear_probe_on_the_synthetic_task_reports_held_out_accuracy(runs: ExampleRuns, work: Path) -> None:
    (result,) = runs.result("probe_synthetic")
    report = json.loads((work / "probe-synthetic.json").read_text())
    assert len(report["classes"]) == 6
    names = {f"{cls}/view{v:03d}" for cls in report["classes"] for v in range(6)}
    check_probe_report(report, result.stdout, names)
    assert [row["C"] for row in report["sweep"]] == [0.1, 1.0, 10.0]
    assert "36 images, 6 classes, 32-d features" in result.stdout


def test_linear_probe_on_an_image_folder(runs: ExampleRuns, work: Path, image_folder_dataset: Path) -> None:
    (result,) = runs.result("probe_folder")
    report = json.loads((work / "probe-folder.json").read_text())
    assert report["classes"] == ["cat", "rocket"]
    check_probe_report(report, result.stdout, {str(p) for p in image_folder_dataset.rglob("*.png")})
    assert len(report["test"]) == 4  # 30% of each class's 6 images, rounded: 2 per class


# -- similarity_search.py ---------------------------------------------------------------------------


def test_similarity_search_index_then_query(
    runs: ExampleRuns, work: Path, checkpoints: dict[str, Path], photo_folder: Path
) -> None:
    built, by_image, by_text = runs.result("search")
    assert "indexed 5 images" in built.stdout
    saved = torch.load(work / "photos.idx.pt", weights_only=True)
    assert saved["features"].shape == (5, factories.TINY_VIT.embed_dim)
    assert saved["model"] == str(checkpoints["vit"].resolve())

    hits = [json.loads(line) for line in by_image.stdout.strip().splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str((photo_folder / "coffee.png").resolve())
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    rows = [line.split() for line in by_text.stdout.strip().splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    model, _ = clipkit.load(checkpoints["vit"], device="cpu")
    with torch.no_grad():
        text = normalised(model.encode_text(clipkit.tokenize(["a cup of coffee"], context_length=16)))[0]
    expected = (saved["features"] @ text).topk(4)
    assert [r[2] for r in rows] == [saved["paths"][i] for i in expected.indices.tolist()]
    assert scores == pytest.approx(expected.values.tolist(), abs=1e-4)


# -- custom_plugin.py ----------------------------------------------------------------------------------


def test_custom_plugin_registers_writes_and_loads_its_own_checkpoint(runs: ExampleRuns, work: Path) -> None:
    (result,) = runs.result("plugin")
    out = result.stdout
    assert "weights round-trip: ok" in out
    assert re.search(r"detected: BagSpec\(.*family='bagclip'.*context_length=32\)", out)
    assert "loaded: BagCLIP on cpu, input 64px, context 32 tokens" in out
    rows = [line for line in out.splitlines() if line.startswith(("red rectangle:", "blue stripes:"))]
    assert len(rows) == 2
    for row in rows:
        probs = [float(x) for x in re.findall(r" (\d\.\d{4})", row)]
        assert len(probs) == 3 and sum(probs) == pytest.approx(1.0, abs=1e-3)
    # the plugin lived in the example's process only: here the built-ins refuse its file, with a typed error
    with pytest.raises(clipkit.errors.NoClaimantError):
        clipkit.inspect(work / "plugin" / "bagclip.pt")
