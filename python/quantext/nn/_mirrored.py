"""Scalar module state kept twice: as a buffer (so ``state_dict``, checkpoints
and DDP's buffer broadcast carry it) and as a Python value (so ``forward`` can
branch on it without reading a device tensor, which would sync on CUDA).

Only for *phase flags*, values that change at documented, explicit points
(``enable``/``disable``, ``observe``, ``freeze_bn``, loading a checkpoint):
``torch.compile`` specializes the compiled graph on the Python copy and guards
on it, so every change costs one recompile (see ``docs/compile.md``). State that
changes on every training step (counters, a freeze that happens after N steps)
must not be mirrored: keep it in a plain buffer updated with tensor ops, which
Dynamo traces without a guard.
"""

from __future__ import annotations

import torch


class MirroredStateMixin:
    """Mixin for ``nn.Module`` subclasses (list it before the module class)
    with mirrored scalar buffers: phase flags."""

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

    def _refresh_mirrored(self, name: str) -> int:
        """Re-reads the Python copy from the buffer (a host read: a sync on CUDA),
        for a buffer that tensor ops may have changed; returns the value."""
        self._mirrored[name] = int(getattr(self, name).item())
        return self._mirrored[name]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Loading is a host round trip anyway; refresh the Python copies here.
        for name in self._mirrored:
            self._refresh_mirrored(name)
