"""QAT modules: :class:`Quantizer` and the quantized layers that hold quantizers.

Structure the exporter and ``quantext.convert`` rely on:

- :class:`QuantConv2d` / :class:`QuantLinear`: ``.weight`` (float), ``.bias``,
  ``.weight_quantizer`` and ``.input_quantizer`` (a :class:`Quantizer` or ``None``);
- :class:`QuantConvBn2d` / :class:`QuantConvBnReLU2d`: the same plus ``.bn``;
  ``.fold()`` returns the inference form (a ``QuantConv2d``, followed by ReLU);
- standalone :class:`Quantizer` modules quantize the inputs of residual adds;
- :class:`QuantMultiheadAttention` / :class:`QuantShiftedWindowAttention`: attention
  whose projections are :class:`QuantLinear` children;
- :class:`QuantTransposedLinear`: Hugging Face's ``Conv1D`` (a Linear whose
  ``.weight`` is stored ``[in, out]``), the same attributes as ``QuantLinear``;
- :class:`QuantEmbedding`: ``.weight`` and ``.weight_quantizer``; ``.input_quantizer``
  is ``None`` (indices);
- :class:`ChannelAffine`: a BatchNorm that follows no convolution, after convert.
"""

from .affine import ChannelAffine
from .attention import QuantMultiheadAttention, QuantShiftedWindowAttention
from .conv_bn import QuantConvBn2d, QuantConvBnReLU2d
from .embedding import QuantEmbedding
from .layers import QuantConv2d, QuantLinear
from .quantizer import MIN_SCALE, Quantizer, param_shape, qparams_from_range
from .transposed_linear import QuantTransposedLinear

__all__ = ["Quantizer", "QuantConv2d", "QuantLinear", "QuantConvBn2d", "QuantConvBnReLU2d", "MIN_SCALE",
           "param_shape", "qparams_from_range", "QuantMultiheadAttention", "QuantShiftedWindowAttention",
           "ChannelAffine", "QuantEmbedding", "QuantTransposedLinear"]
