"""Loads the native library, which registers ``torch.ops.quantext.*``, and the
fake implementations of its ops (:mod:`quantext._fakes`)."""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the ops)
from . import _fakes  # noqa: F401  (registers their fakes)

ops = torch.ops.quantext
