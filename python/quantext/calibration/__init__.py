"""Calibration (DESIGN 5): observers that record a tensor's statistics, and the
range methods that turn them into a clipping range ``(lo, hi)``.

- :mod:`.observers`: :class:`Observer`, :class:`MinMaxObserver`,
  :class:`GroupMinMaxObserver`; :mod:`.group_mse`: :class:`GroupMSEObserver`
  (per-group ``mse``, searched on the weight); :mod:`.histogram_observer`:
  :class:`HistogramObserver` (what every other method needs);
  :mod:`.factory`: :func:`make_observer` (the observer of a spec).
- :mod:`.ranges`: the methods (``max``, ``percentile``, ``mse``, ``entropy``,
  ``aciq``; the module docstring defines each) over :class:`HistogramStats`
  (:mod:`.stats`), in C++.
- :mod:`.histograms`: the histogram ops; :mod:`.clip`: :func:`compute_clip`,
  the range of a raw tensor or an observer in one call.

Calibrating a whole model is :func:`quantext.calibrate`.
"""

from .clip import compute_clip
from .factory import make_observer
from .group_mse import GroupMSEObserver
from .histogram_observer import HistogramObserver
from .histograms import histogram, magnitude_histogram
from .observers import GroupMinMaxObserver, MinMaxObserver, Observer
from .ranges import ACIQ_PRIORS, ACIQ_SIGMAS, KL_VARIANTS, aciq_ratio, magnitude_levels, range_from_stats
from .stats import HistogramStats

__all__ = ["compute_clip", "make_observer", "HistogramObserver", "histogram", "magnitude_histogram", "Observer",
           "MinMaxObserver", "GroupMinMaxObserver", "GroupMSEObserver", "aciq_ratio", "magnitude_levels",
           "range_from_stats",
           "HistogramStats", "KL_VARIANTS", "ACIQ_PRIORS", "ACIQ_SIGMAS"]
