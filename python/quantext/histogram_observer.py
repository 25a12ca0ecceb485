"""Alias of :mod:`quantext.calibration.histogram_observer`, the module's former place."""

from .calibration.histogram_observer import HistogramObserver

__all__ = ["HistogramObserver"]
