"""QAT version of ``nn.Embedding``: the table is fake-quantized as a weight
(per row by default, ``axis=0``: one scale per token; per group along the
embedding dimension with ``granularity="group", axis=1``), the looked-up
indices are integers and get no quantizer. A weight shared with another layer
(a tied language-model head) is quantized once: ``prepare_qat`` gives both
layers the same quantizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import QConfig
from .layers import attach_quantizers, quantize_or_identity


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized by ``weight_quantizer``
    (``input_quantizer`` is ``None``: indices are not quantized).

    Build it with :meth:`from_float`. ``max_norm`` (which renormalizes the table
    in place while looking it up) and ``sparse=True`` (the straight-through
    gradient of the quantized table is dense) are refused.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 qconfig: QConfig, scale_grad_by_freq: bool = False, device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, scale_grad_by_freq=scale_grad_by_freq,
                         device=device, dtype=dtype)
        attach_quantizers(self, qconfig, self.weight.shape, quantize_input=False)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        weight = quantize_or_identity(self.weight_quantizer, self.weight)
        return F.embedding(indices, weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, False)

    @classmethod
    def from_float(cls, module: nn.Embedding, qconfig: QConfig) -> "QuantEmbedding":
        """A QAT copy of ``module`` sharing its weight parameter."""
        if type(module) is not nn.Embedding:
            raise TypeError(f"QuantEmbedding.from_float expects an nn.Embedding, got {type(module).__name__}")
        if module.max_norm is not None:
            raise ValueError(f"QuantEmbedding: max_norm={module.max_norm} renormalizes the table in place on "
                             "lookup, which a fake-quantized table cannot do; skip this embedding")
        if module.sparse:
            raise ValueError("QuantEmbedding: sparse=True is not supported (the straight-through gradient of a "
                             "quantized table is dense); skip this embedding or use sparse=False")
        new = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, qconfig=qconfig,
                  scale_grad_by_freq=module.scale_grad_by_freq, device=module.weight.device,
                  dtype=module.weight.dtype)
        new.weight = module.weight
        return new.train(module.training)
