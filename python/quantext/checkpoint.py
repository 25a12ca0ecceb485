"""QAT checkpoints that are written atomically and verified when read.

A checkpoint is a ``torch.save`` file (so ``torch.load(path, weights_only=True)``
also reads it) holding the model's state dict (quantizer scales, zero points,
observer statistics and flags included), the optimizer's, the random number
generator states and user entries, plus a SHA-256 digest of all of it.

:func:`save_checkpoint` writes to a temporary file in the same directory,
fsyncs it and renames it over ``path``: a process killed while saving leaves
the previous checkpoint intact. :func:`load_checkpoint` reads with
``weights_only=True`` (no arbitrary code from the file), recomputes the digest
(``torch.load`` does not notice a corrupted tensor payload: it loads the wrong
values), checks that the model's entries are all there and only then loads
anything; a truncated, corrupted or mismatched file raises
:class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

import torch
from torch import nn

FORMAT = "quantext-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupted, or not for this model."""


def _update_digest(h: "hashlib._Hash", obj: Any) -> None:
    """Feeds a canonical serialization of ``obj`` (nested containers of tensors and scalars) to ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _update_digest(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _update_digest(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def _digest(content: dict[str, Any]) -> str:
    h = hashlib.sha256()
    _update_digest(h, content)
    return h.hexdigest()


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    extra: dict[str, Any] | None = None, rng: bool = True) -> None:
    """Writes ``model``'s and ``optimizer``'s state (and the RNG states, and
    ``extra``: plain Python values or tensors, e.g. the step or a scheduler's
    state dict) to ``path``, atomically (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    content = {"model": model.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict(),
               "rng": _rng_states() if rng else None, "extra": dict(extra or {})}
    record = {"format": FORMAT, "version": VERSION, **content, "sha256": _digest(content)}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path: str, map_location: Any) -> dict[str, Any]:
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 (zip, pickle and EOF errors all mean the same here)
        first_line = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint '{path}' cannot be read (truncated or corrupted?): "
                              f"{type(err).__name__}: {first_line}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a quantext checkpoint (written by qx.save_checkpoint)")
    if record.get("version") != VERSION:
        raise CheckpointError(f"checkpoint '{path}' has format version {record.get('version')!r}, "
                              f"this quantext reads version {VERSION}")
    content = {k: record.get(k) for k in ("model", "optimizer", "rng", "extra")}
    if record.get("sha256") != _digest(content):
        raise CheckpointError(f"checkpoint '{path}' is corrupted: its content does not match its SHA-256 digest")
    return content


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    map_location: Any = "cpu", restore_rng: bool = True) -> dict[str, Any]:
    """Restores what :func:`save_checkpoint` wrote into ``model`` (strictly: the
    same entries) and ``optimizer``, and the RNG states unless ``restore_rng``
    is False. Returns the ``extra`` entries.

    Nothing is loaded unless the file is intact and holds every entry of
    ``model`` and nothing else (and an optimizer state when ``optimizer`` is
    given); otherwise :class:`CheckpointError` is raised.
    """
    path = os.fspath(path)
    content = _read(path, map_location)
    have, want = set(content["model"]), set(model.state_dict())
    if have != want:
        missing, unexpected = sorted(want - have), sorted(have - want)
        raise CheckpointError(f"checkpoint '{path}' does not fit this model: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    if optimizer is not None and content["optimizer"] is None:
        raise CheckpointError(f"checkpoint '{path}' holds no optimizer state")
    model.load_state_dict(content["model"])
    if optimizer is not None:
        optimizer.load_state_dict(content["optimizer"])
    if restore_rng and content["rng"] is not None:
        torch.set_rng_state(content["rng"]["cpu"].cpu())
        if "cuda" in content["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in content["rng"]["cuda"]])
    return content["extra"]
