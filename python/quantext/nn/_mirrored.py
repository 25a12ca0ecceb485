"""Scalar module state kept twice: as a buffer (so ``state_dict``, checkpoints
and DDP's buffer broadcast carry it) and as a Python value (so ``forward`` can
branch on it without reading a device tensor, which would sync on CUDA)."""

from __future__ import annotations

import torch


class MirroredStateMixin:
    """Mixin for ``nn.Module`` subclasses (list it before the module class)
    with mirrored scalar buffers: flags and counters."""

    def _register_mirrored(self, name: str, value: int, dtype: torch.dtype = torch.uint8,
                           device: torch.device | str | None = None) -> None:
        self.register_buffer(name, torch.tensor(int(value), dtype=dtype, device=device))
        if "_mirrored" not in self.__dict__:
            self._mirrored: dict[str, int] = {}
        self._mirrored[name] = int(value)

    def _set_mirrored(self, name: str, value: int) -> None:
        self._mirrored[name] = int(value)
        getattr(self, name).fill_(int(value))

    def _get_mirrored(self, name: str) -> int:
        return self._mirrored[name]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Loading is a host round trip anyway; refresh the Python copies here.
        for name in self._mirrored:
            self._mirrored[name] = int(getattr(self, name).item())
