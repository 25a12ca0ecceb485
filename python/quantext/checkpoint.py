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

Loading is atomic: when anything fails (a shape or quantizer-spec mismatch
found only while loading, an optimizer state for other parameters, an RNG
state that does not fit), model, optimizer and RNG are put back exactly as
they were (every tensor, parameter identity included) before the error is
raised. The price is one copy of the model's and optimizer's tensors held
while loading.

``extra`` values must be of the types ``torch.load(weights_only=True)`` reads
(None, bool, int, float, str, bytes, tensors, torch dtypes/devices/sizes and
lists, tuples and dicts of them): :func:`save_checkpoint` raises TypeError
naming the entry otherwise (``numpy`` scalars and arrays, ``datetime``,
``pathlib.Path`` ...), instead of writing a file that cannot be read back.

A process killed while saving (SIGKILL: no cleanup code runs) leaves its
temporary file ``<name>.<pid>.<random>.tmp`` behind; the next
:func:`save_checkpoint` to the same path removes those of processes that no
longer run.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import os
import pickle
import tempfile
from typing import Any

import torch
from torch import nn

from ._transaction import ModuleSnapshot, atomic  # noqa: F401  (ModuleSnapshot: public here too)
from .nn.quantizer import Quantizer

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


# ----------------------------------------------------------------- extra values
_PLAIN = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)


def _check_loadable(value: Any, where: str) -> None:
    """TypeError unless ``torch.load(weights_only=True)`` reads ``value`` back."""
    kind = type(value)
    if kind in _PLAIN or isinstance(value, torch.Tensor):
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_loadable(item, f"{where}[{i}]")
        return
    if kind in (dict, collections.OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int, bool, float, type(None)):
                raise TypeError(f"save_checkpoint: {where} has a key of type {type(key).__name__} ({key!r}); "
                                "keys must be str, int, float, bool or None")
            _check_loadable(item, f"{where}[{key!r}]")
        return
    hint = ""
    if kind.__module__ == "numpy":
        hint = " (convert it: float(v), int(v) or torch.from_numpy(a))"
    elif kind.__module__ in ("datetime", "pathlib"):
        hint = " (store str(v) or v.isoformat())"
    raise TypeError(f"save_checkpoint: {where} is a {kind.__module__}.{kind.__qualname__}, which "
                    f"torch.load(weights_only=True) cannot read back{hint}; store plain Python values "
                    "(None, bool, int, float, str, bytes), tensors, or lists/tuples/dicts of them")


def _remove_stale_temporaries(path: str) -> None:
    """Deletes ``path``'s temporary files left by save_checkpoint calls of processes that died (SIGKILL)."""
    for tmp in glob.glob(glob.escape(path) + ".*.tmp"):
        parts = tmp[len(path) + 1:-len(".tmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        except OSError:
            pass  # alive (another user's process), or unknown: leave it


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
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    for key, value in (extra or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"save_checkpoint: extra keys must be str, got {key!r}")
        _check_loadable(value, f"extra[{key!r}]")
    content = {"model": model.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict(),
               "rng": _rng_states() if rng else None, "extra": dict(extra or {})}
    record = {"format": FORMAT, "version": VERSION, **content, "sha256": _digest(content)}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(os.path.join(directory, os.path.basename(path)))
    fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=directory)
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
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err).lower() or "weights only" in str(err).lower():
            detail = [line for line in str(err).splitlines() if "global" in line.lower()] or [""]
            raise CheckpointError(f"checkpoint '{path}' holds a value that torch.load(weights_only=True) refuses "
                                  f"to unpickle (not a corruption: it was written with a non-tensor, non-plain "
                                  f"Python value, e.g. a numpy scalar in `extra`): {detail[0].strip()}") from err
        first_line = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint '{path}' cannot be read (truncated or corrupted?): "
                              f"{type(err).__name__}: {first_line}") from err
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


def _is_quantizer_extra_state(model: nn.Module, key: str) -> bool:
    prefix, _, leaf = key.rpartition(".")
    if leaf != "_extra_state":
        return False
    try:
        return isinstance(model.get_submodule(prefix), Quantizer)
    except AttributeError:
        return False


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    map_location: Any = "cpu", restore_rng: bool = True, strict: bool = True) -> dict[str, Any]:
    """Restores what :func:`save_checkpoint` wrote into ``model`` (strictly: the
    same entries) and ``optimizer``, and the RNG states unless ``restore_rng``
    is False. Returns the ``extra`` entries.

    Nothing is loaded unless the file is intact and holds every entry of
    ``model`` and nothing else (and an optimizer state when ``optimizer`` is
    given), with the shapes of ``model``'s entries; otherwise
    :class:`CheckpointError` is raised. Any later failure (a quantizer spec
    that differs from the saved one, an optimizer state that does not fit)
    puts model, optimizer and RNG back as they were and raises
    :class:`CheckpointError`: loading is all or nothing.

    ``strict=False`` accepts quantizer states saved under another spec (bits,
    signedness, symmetry, granularity ...: see
    :meth:`quantext.nn.Quantizer.load_state_dict`); entries must still match.
    Checkpoints written before quantizers saved their spec load as before.
    """
    path = os.fspath(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    content = _read(path, map_location)
    saved, current = content["model"], model.state_dict()
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint '{path}' holds no model state dict")
    have, want = set(saved), set(current)
    # Quantizer specs (their _extra_state) are optional: older checkpoints lack them.
    optional = {k for k in want - have if _is_quantizer_extra_state(model, k)}
    if have != want - optional:
        missing, unexpected = sorted(want - have - optional), sorted(have - want)
        raise CheckpointError(f"checkpoint '{path}' does not fit this model: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    mismatched = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(current[k].shape)}" for k in sorted(have)
                  if isinstance(saved[k], torch.Tensor) and isinstance(current[k], torch.Tensor)
                  and saved[k].shape != current[k].shape and current[k].numel() != 0]
    if mismatched:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model: {len(mismatched)} entries differ in "
                              f"shape: {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}; nothing was loaded")
    if optimizer is not None and content["optimizer"] is None:
        raise CheckpointError(f"checkpoint '{path}' holds no optimizer state")
    rng_before = torch.get_rng_state()

    def load() -> None:
        model.load_state_dict(saved, strict=strict)
        if optimizer is not None:
            optimizer.load_state_dict(content["optimizer"])
        if restore_rng and content["rng"] is not None:
            torch.set_rng_state(content["rng"]["cpu"].cpu())
            if "cuda" in content["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in content["rng"]["cuda"]])

    try:
        atomic(model.modules(), load, optimizer)
    except Exception as err:  # noqa: BLE001 (every failure means the same: not loaded)
        torch.set_rng_state(rng_before)
        raise CheckpointError(f"checkpoint '{path}' could not be loaded into this model (nothing was changed): "
                              f"{type(err).__name__}: {err}") from err
    return content["extra"]
