"""All-or-nothing changes to modules: :func:`atomic` runs an action and, if it
raises, puts the modules (and an optimizer) back exactly as they were. Used by
:func:`quantext.load_checkpoint`, :meth:`quantext.nn.Quantizer.load_state_dict`
and :func:`quantext.calibrate`."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn


class ModuleSnapshot:
    """Everything a state load (or a calibration) may change in ``modules``,
    to put back with :meth:`restore`: each module's attribute dict (shallow:
    ``spec``, ``name``, ``_mirrored``, the parameter/buffer/submodule tables)
    and a copy of every tensor's values. Restoring puts the very same
    parameter and buffer objects back (an optimizer's references stay valid)
    holding their old values, shapes and dtypes."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self._modules: list[tuple[nn.Module, dict[str, Any], dict[str, dict], dict]] = []
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen: set[int] = set()
        for m in modules:
            if id(m) in seen:
                continue
            seen.add(id(m))
            tables = {k: dict(m.__dict__[k]) for k in ("_parameters", "_buffers", "_modules") if k in m.__dict__}
            mirrored = dict(m.__dict__["_mirrored"]) if "_mirrored" in m.__dict__ else None
            self._modules.append((m, dict(m.__dict__), tables, mirrored))
            for t in list(tables.get("_parameters", {}).values()) + list(tables.get("_buffers", {}).values()):
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    self._tensors.append((t, t.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for m, attrs, tables, mirrored in self._modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for k, table in tables.items():
                m.__dict__[k] = table
            if mirrored is not None:
                m.__dict__["_mirrored"] = mirrored
        for t, saved in self._tensors:
            if t.shape == saved.shape and t.dtype == saved.dtype and t.device == saved.device:
                t.copy_(saved)
            else:
                t.data = saved


def atomic(modules: Iterable[nn.Module], action: Callable[[], Any],
           optimizer: torch.optim.Optimizer | None = None) -> Any:
    """Runs ``action()``; if it raises, ``modules`` (and ``optimizer``) are
    restored exactly as they were (see :class:`ModuleSnapshot`) and the error
    propagates."""
    snapshot = ModuleSnapshot(modules)
    opt_state = None if optimizer is None else (optimizer.__dict__.get("state"), optimizer.param_groups)
    try:
        return action()
    except BaseException:
        snapshot.restore()
        if optimizer is not None:
            optimizer.__dict__["state"], optimizer.param_groups = opt_state
        raise


