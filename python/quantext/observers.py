"""Alias of :mod:`quantext.calibration.observers` (and
:func:`~quantext.calibration.make_observer`), the module's former place."""

from .calibration.factory import make_observer
from .calibration.observers import GroupMinMaxObserver, MinMaxObserver, Observer

__all__ = ["Observer", "MinMaxObserver", "GroupMinMaxObserver", "make_observer"]
