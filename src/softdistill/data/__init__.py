"""Data: data sets by name (one registry, open to plugins), seeded splits, addressable views, and two
loaders (images on the device, or files decoded by worker processes) that give the same batches."""

from softdistill.data.config import DataConfig
from softdistill.data.readers import (DatasetInfo, Split, datasets, load_split, read_split, register_dataset)
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import DataBundle, prepare_data
from softdistill.data.samples import (DatasetFormatError, DatasetNotFoundError, FileSet, IdIndex, StreamSet, TensorSet,
                                      UnreadableImageError)
from softdistill.data.shifts import (OOD_KINDS, OODSpec, gaussian_blur, gaussian_noise, ood_set, ood_sets, parse_ood_spec,
                                     parse_ood_specs, rotate, translate)
from softdistill.data.splits import per_class_subset, stratified_split
from softdistill.data.sampler import GlobalBatchSampler, ViewDataset
from softdistill.data.views import AugmentConfig, ViewPlan, ViewTransform, ViewTransformError

__all__ = ["DataConfig", "AugmentConfig", "ViewPlan", "ViewTransform", "ViewTransformError", "GlobalBatchSampler",
           "ViewDataset", "register_dataset", "datasets", "DatasetInfo", "Split",
           "read_split", "load_split", "TensorSet", "StreamSet", "FileSet", "IdIndex", "DatasetNotFoundError",
           "DatasetFormatError", "UnreadableImageError", "stratified_split", "per_class_subset", "BatchTransform",
           "BatchLoader", "DataBundle", "prepare_data", "OOD_KINDS", "OODSpec", "parse_ood_spec", "parse_ood_specs",
           "ood_set", "ood_sets", "translate", "rotate", "gaussian_noise", "gaussian_blur"]
