"""Data formats and datasets: v1g grounded-trace records (:mod:`pointcopy.data.v1g`)."""

from pointcopy.data.v1g import (
    IMAGE_PREFIX,
    BadRecord,
    ReadResult,
    V1GError,
    V1GRecord,
    expand_regions,
    iter_v1g,
    read_v1g,
    record_from_row,
    training_view,
    validate_record,
    validation_errors,
    write_v1g,
)

__all__ = [
    "IMAGE_PREFIX",
    "BadRecord",
    "ReadResult",
    "V1GError",
    "V1GRecord",
    "expand_regions",
    "iter_v1g",
    "read_v1g",
    "record_from_row",
    "training_view",
    "validate_record",
    "validation_errors",
    "write_v1g",
]
