"""clipkit-hf reads ``config.json`` and ``preprocessor_config.json`` values strictly by JSON type.

A value of the wrong type (``"12"`` heads, ``"1e-5"`` epsilon, ``true`` as a
PIL filter) is a ``ConfigurationError`` naming the file, the key and the value;
it is never coerced or silently replaced by a default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import clipkit
import hf_reference as ref
from clipkit.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("hf_registered")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPImageProcessor

    directory = tmp_path_factory.mktemp("hf") / "clip"
    ref.make_clip(seed=3).save_pretrained(directory)
    CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(("file", "path", "value"), [
    ("config.json", "text_config.num_attention_heads", "2"),
    ("config.json", "vision_config.num_attention_heads", 2.0),
    ("config.json", "text_config.layer_norm_eps", "1e-05"),
    ("config.json", "vision_config.layer_norm_eps", True),
    ("config.json", "vision_config.hidden_act", ["gelu"]),
    ("config.json", "text_config.eos_token_id", "99"),
    ("preprocessor_config.json", "resample", True),
    ("preprocessor_config.json", "rescale_factor", "0.00392156862745098"),
])
def test_a_mistyped_value_is_refused_naming_file_key_and_value(saved: Path, tmp_path: Path, file: str, path: str,
                                                               value: Any) -> None:
    import shutil

    directory = Path(shutil.copytree(saved, tmp_path / "clip"))
    config = json.loads((directory / file).read_text())
    *parents, key = path.split(".")
    node = config
    for name in parents:
        node = node.setdefault(name, {})
    node[key] = value
    (directory / file).write_text(json.dumps(config))
    with pytest.raises(ConfigurationError) as info:
        clipkit.inspect(directory)
    assert file in str(info.value) and key in str(info.value) and repr(value) in str(info.value)
