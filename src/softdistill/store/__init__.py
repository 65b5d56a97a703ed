"""The soft-label store: soft labels of every (sample, view) of a view plan, labelled once, in
memory-mapped shards of fixed-size records with a JSON manifest (see docs/store.md).

``format`` (layout, manifest, atomic writes, the writer's lock), ``encoding`` (full logits or
top-k with its rebuilding rule), ``writer`` (labelling, resumable and distributed), ``reader``
(:class:`Store`, looked up by sample id and view).  The soft-label source that trains from a
store is :mod:`softdistill.soft_labels.store`.
"""

from softdistill.store.encoding import Encoding, EncodingConfig, topk_encode, topk_logits
from softdistill.store.format import FORMAT, StoreError
from softdistill.store.reader import Store, plan_of
from softdistill.store.writer import write_store

__all__ = ["Encoding", "EncodingConfig", "topk_encode", "topk_logits", "FORMAT", "StoreError", "Store", "plan_of", "write_store"]
