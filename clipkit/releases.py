"""The official OpenAI CLIP releases as data: name, SHA-256 and file name (the digest is the URL's last directory).

A bottom-floor table: the built-in model registry (``clipkit.builtin.models``)
offers these names, and the cache (``clipkit.fetching.cache``) keeps these
files under their bare names, as the reference does, so its downloads
(``~/.cache/clip/ViT-B-32.pt``) are reused.
"""

from __future__ import annotations

#: Where the official releases are published: ``{OFFICIAL_BASE_URL}/{sha256}/{file name}``.
OFFICIAL_BASE_URL = "https://openaipublic.azureedge.net/clip/models"

#: name -> (sha256, file name), in the reference's order.
OFFICIAL_RELEASES: dict[str, tuple[str, str]] = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}

#: name -> (open_clip's copy on the Hugging Face Hub, in its layout with ``open_clip_config.json``, as
#: open_clip 3.3's ``pretrained.py`` lists for the ``openai`` tag; transformers' copy, read by the clipkit-hf
#: plugin, or ``None``). The same weights as the release, in other files: tried, in this order, after the
#: original URL. No revision is pinned: the repos' commits could not be checked when this table was written.
OFFICIAL_HUB_COPIES: dict[str, tuple[str, str | None]] = {
    "RN50": ("timm/resnet50_clip.openai", None),
    "RN101": ("timm/resnet101_clip.openai", None),
    "RN50x4": ("timm/resnet50x4_clip.openai", None),
    "RN50x16": ("timm/resnet50x16_clip.openai", None),
    "RN50x64": ("timm/resnet50x64_clip.openai", None),
    "ViT-B/32": ("timm/vit_base_patch32_clip_224.openai", "openai/clip-vit-base-patch32"),
    "ViT-B/16": ("timm/vit_base_patch16_clip_224.openai", "openai/clip-vit-base-patch16"),
    "ViT-L/14": ("timm/vit_large_patch14_clip_224.openai", "openai/clip-vit-large-patch14"),
    "ViT-L/14@336px": ("timm/vit_large_patch14_clip_336.openai", "openai/clip-vit-large-patch14-336"),
}

#: (sha256, file name) of each official release: the files the cache keeps under their bare name.
OFFICIAL_FILES: frozenset[tuple[str, str]] = frozenset(OFFICIAL_RELEASES.values())


def official_url(name: str) -> str:
    """The download URL of the official release ``name`` (a key of ``OFFICIAL_RELEASES``)."""
    digest, filename = OFFICIAL_RELEASES[name]
    return f"{OFFICIAL_BASE_URL}/{digest}/{filename}"
