"""Real photos (scikit-image's) written as files, a few broken ones, and the oracle the batch tests compare against."""

from __future__ import annotations

import io
from pathlib import Path

import factories
import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "rocket", "camera", "coins", "colorwheel", "logo",
          "immunohistochemistry", "hubble_deep_field", "page")
# a ViT small enough to run in milliseconds, with OpenAI's full vocabulary so real prompts tokenize
TINY_FULL_VOCAB = factories.TINY_VIT.with_(vocab_size=49408, context_length=77)


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as a uint8 array (grey, RGB or RGBA, as shipped)."""
    import skimage.data

    return getattr(skimage.data, name)()


def photo_bytes(count: int, *, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` encoded images: crops of the sample photos, alternating JPEG and PNG, as ``(file name, bytes)``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = [photo(name) for name in PHOTOS]
    files = []
    for number in range(count):
        array = arrays[number % len(arrays)]
        height, width = array.shape[:2]
        top, left = int(rng.integers(0, height // 4)), int(rng.integers(0, width // 4))
        image = Image.fromarray(array[top: top + height // 2 + 40, left: left + width // 2 + 40])
        fmt = "PNG" if number % 2 or image.mode == "RGBA" else "JPEG"
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        files.append((f"{PHOTOS[number % len(PHOTOS)]}-{number:04d}.{fmt.lower().replace('jpeg', 'jpg')}",
                      buffer.getvalue()))
    return files


def broken_files() -> list[tuple[str, bytes]]:
    """Files that look like images by name but cannot be decoded: truncated JPEG, text, empty."""
    jpeg = dict(photo_bytes(1))["astronaut-0000.jpg"]
    return [("broken-truncated.jpg", jpeg[: len(jpeg) // 3]), ("broken-text.png", b"not an image at all\n"),
            ("broken-empty.jpg", b"")]


def write_files(folder: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    """Write ``files`` into ``folder`` (created); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files:
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def direct_image_embeddings(model: torch.nn.Module, preprocess, paths: list[Path]) -> np.ndarray:
    """The oracle: ``model.encode_image(preprocess(img))`` for each path, one at a time, L2-normalised."""
    from PIL import Image

    rows = []
    with torch.no_grad():
        for path in paths:
            with Image.open(path) as image:
                rows.append(F.normalize(model.encode_image(preprocess(image).unsqueeze(0)).float(), dim=-1)[0])
    return torch.stack(rows).numpy()


def embedding_matrix(table) -> np.ndarray:
    """A table's ``embedding`` column as a ``[rows, dim]`` float32 array (rows with a null embedding left out)."""
    column = table.column("embedding").combine_chunks()
    return np.asarray(column.drop_null().flatten(), dtype=np.float32).reshape(-1, column.type.list_size)
