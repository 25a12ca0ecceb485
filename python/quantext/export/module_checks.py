"""The exporter's only knowledge of quantext's modules, duck-typed: a model
that still holds BatchNorm (``qx.convert`` leaves none: folded, or a
:class:`~quantext.nn.ChannelAffine`) or an enabled quantizer flagged as never
calibrated, is refused before tracing, with the module's path. Everything
else is read from the ops in the traced graph."""

from __future__ import annotations

from torch import nn

from ..spec import QuantSpec


def check_modules(model: nn.Module) -> None:
    """Raises ``ValueError`` naming the first module that cannot be exported."""
    modules = dict(model.named_modules())
    for path, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            owner_path = path.rpartition(".")[0]
            owner = modules[owner_path]
            if owner is not model and hasattr(owner, "weight_quantizer"):
                raise ValueError(f"module '{owner_path}' ({type(owner).__name__}) still computes BatchNorm "
                                 f"('{path}'): call qx.convert(model) to fold it into the weights before export")
            raise ValueError(f"module '{path}' ({type(module).__name__}) is not folded: call qx.convert(model) "
                             "before export (it folds a BatchNorm into the convolution before it, and turns any "
                             "other into the per-channel affine qx.nn.ChannelAffine, which exports as Mul/Add)")
        # (a disabled quantizer returns its input: it is not exported)
        spec = getattr(module, "spec", None)
        if isinstance(spec, QuantSpec) and getattr(module, "calibrated", True) is False \
                and getattr(module, "enabled", True):
            raise ValueError(f"quantizer '{path}' was never calibrated: run qx.calibrate(model, batches) "
                             "(or load a calibrated state_dict) before export")
