"""Bundled datasets and models (one folder each), their seeded builders, and the dataset loading API."""

from trl_ext.data.loading import (
    REQUIRED_COLUMNS,
    check_columns,
    load_dataset_by_name,
    load_datasets,
    select_split,
    split_data_files,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "check_columns",
    "load_dataset_by_name",
    "load_datasets",
    "select_split",
    "split_data_files",
]
