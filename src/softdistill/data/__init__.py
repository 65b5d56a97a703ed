"""Data: dataset readers, seeded splits, in-memory tensors and a batched on-device loader."""

from softdistill.data.loader import BatchLoader, BatchTransform, TensorSet
from softdistill.data.prepare import DataBundle, prepare_data
from softdistill.data.sources import DATASETS, DatasetFormatError, DatasetNotFoundError, RawSplit, load_split
from softdistill.data.splits import per_class_subset, stratified_split

__all__ = ["load_split", "RawSplit", "DATASETS", "DatasetNotFoundError", "DatasetFormatError", "stratified_split",
           "per_class_subset", "TensorSet", "BatchTransform", "BatchLoader", "DataBundle", "prepare_data"]
