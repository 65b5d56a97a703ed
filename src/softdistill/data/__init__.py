"""Data: dataset readers, seeded splits, in-memory tensors and a batched on-device loader."""

from softdistill.data.loader import BatchLoader, BatchTransform, TensorSet
from softdistill.data.prepare import DataBundle, prepare_data
from softdistill.data.datasets import DATASETS, DatasetFormatError, DatasetNotFoundError, RawSplit, load_split
from softdistill.data.shifts import (OOD_KINDS, OODSpec, gaussian_blur, gaussian_noise, ood_set, ood_sets, parse_ood_spec,
                                     parse_ood_specs, rotate, translate)
from softdistill.data.splits import per_class_subset, stratified_split

__all__ = ["load_split", "RawSplit", "DATASETS", "DatasetNotFoundError", "DatasetFormatError", "stratified_split",
           "per_class_subset", "TensorSet", "BatchTransform", "BatchLoader", "DataBundle", "prepare_data",
           "OOD_KINDS", "OODSpec", "parse_ood_spec", "parse_ood_specs", "ood_set", "ood_sets", "translate", "rotate",
           "gaussian_noise", "gaussian_blur"]
