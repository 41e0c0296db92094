"""Batch work over collections: embed images or captions, classify images zero-shot, into Parquet.

```python
from clipkit import batch

result = batch.embed_images("photos/", "out/", model="ViT-B/32")           # local engine (DataLoader workers)
result = batch.embed_images("s3://bucket/imgs/", "out/", model="ViT-B/32", engine="ray")  # Ray Data
batch.embed_texts("captions.txt", "text-out/", model="ViT-B/32")
batch.classify("photos/", "cls-out/", model="ViT-B/32", labels=["cat", "dog"], top_k=2)
table = result.read()      # pyarrow.Table: index, id, embedding, error (+ labels, scores, score_kind)
```

Both engines write the same schema, one row per input in input order, in
shards written atomically; a re-run into the same folder resumes.
"""

from clipkit.batch.api import BatchResult, classify, embed, embed_images, embed_texts
from clipkit.batch.compute import DEFAULT_TEMPLATES, score_kind
from clipkit.batch.sources import Inputs, read_source

__all__ = [
    "DEFAULT_TEMPLATES",
    "BatchResult",
    "Inputs",
    "classify",
    "embed",
    "embed_images",
    "embed_texts",
    "read_source",
    "score_kind",
]
