"""``make_observer``: the observer a quantizer's spec needs."""

from __future__ import annotations

from ..spec import QuantSpec
from .group_mse import GroupMSEObserver
from .histogram_observer import HistogramObserver
from .observers import GroupMinMaxObserver, MinMaxObserver, Observer


def make_observer(spec: QuantSpec) -> Observer:
    """The observer that ``spec`` needs: per group (``granularity="group"``, min/max
    of each group, and for ``calibration="mse"`` a search on the tensor itself),
    else per tensor or per channel along ``spec.axis``, min/max for
    ``calibration="max"`` and a :class:`HistogramObserver` for every other method."""
    if spec.granularity == "group":
        if spec.calibration == "mse":
            return GroupMSEObserver(spec.axis, spec.group_size)
        return GroupMinMaxObserver(spec.axis, spec.group_size)
    if spec.calibration == "max":
        return MinMaxObserver(axis=spec.per_channel_axis)
    return HistogramObserver(axis=spec.per_channel_axis)
