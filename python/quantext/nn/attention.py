"""QAT forms of attention modules whose projections are not called as layers.

``nn.MultiheadAttention`` keeps its input projection as one packed tensor
(``in_proj_weight``) that ``F.multi_head_attention_forward`` multiplies
directly, and torchvision's Swin ``ShiftedWindowAttention`` passes
``qkv.weight`` and ``proj.weight`` to a function: neither calls a Linear layer
that ``prepare_qat`` could swap. The modules here compute the same function
with every projection an ordinary :class:`~quantext.nn.QuantLinear` (weight
per output channel, input per tensor), so convert and export treat them as any
other quantized Linear. What stays in float inside attention (see
``docs/attention.md``): the scores ``Q K^T``, the mask and bias additions, the
softmax and the product with ``V``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import QConfig
from .layers import QuantLinear


def _quant_linear(weight: torch.Tensor, bias: torch.Tensor | None, qconfig: QConfig) -> QuantLinear:
    """A QuantLinear holding ``weight``/``bias`` (Parameters are shared, slices copied)."""
    layer = QuantLinear(weight.shape[1], weight.shape[0], bias is not None, qconfig=qconfig, device=weight.device,
                        dtype=weight.dtype)
    layer.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().clone())
    if bias is not None:
        layer.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach().clone())
    return layer


class QuantMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with quantized ``q_proj``, ``k_proj``, ``v_proj`` and
    ``out_proj`` (:class:`QuantLinear`); same arguments, outputs and masks.

    Build it with :meth:`from_float`: a packed ``in_proj_weight`` is split into the
    three projections (copies, so state-dict keys become ``q_proj.weight`` ...).
    Each projection has its own input quantizer, so cross-attention (distinct
    query, key and value) is quantized correctly. ``in_proj_weight`` and
    ``in_proj_bias`` are ``None`` and ``_qkv_same_embed_dim`` is False, which keeps
    ``nn.TransformerEncoderLayer`` off its fused fast path (that path would read
    the float weights and bypass the quantizers).
    """

    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, q_proj: QuantLinear, k_proj: QuantLinear, v_proj: QuantLinear, out_proj: QuantLinear,
                 num_heads: int, dropout: float = 0.0, batch_first: bool = False, bias_k: torch.Tensor | None = None,
                 bias_v: torch.Tensor | None = None, add_zero_attn: bool = False) -> None:
        super().__init__()
        self.embed_dim = q_proj.out_features
        if self.embed_dim % num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({num_heads})")
        self.kdim, self.vdim = k_proj.in_features, v_proj.in_features
        self.num_heads, self.head_dim = num_heads, self.embed_dim // num_heads
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.bias_k, self.bias_v = bias_k, bias_v

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, qconfig: QConfig) -> "QuantMultiheadAttention":
        """From an ``nn.MultiheadAttention`` (packed or separate projection weights)."""
        if type(mha) is not nn.MultiheadAttention:
            raise TypeError(f"QuantMultiheadAttention.from_float expects an nn.MultiheadAttention, got "
                            f"{type(mha).__name__}")
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.split(e)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.split(e)
        q, k, v = (_quant_linear(w, b, qconfig) for w, b in zip(weights, biases))
        out = _quant_linear(mha.out_proj.weight, mha.out_proj.bias, qconfig)
        new = cls(q, k, v, out, mha.num_heads, mha.dropout, mha.batch_first, mha.bias_k, mha.bias_v,
                  mha.add_zero_attn)
        return new.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``. ``is_causal`` is a hint that
        ``attn_mask`` is the causal mask; the mask is what is applied."""
        if is_causal and attn_mask is None:
            raise RuntimeError("QuantMultiheadAttention: is_causal=True needs attn_mask (the causal mask); "
                               "is_causal is only a hint")
        batched = query.dim() == 3
        if batched and self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        tgt_len, bsz, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # [L, N, E], [S, N, E]
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask, key_padding_mask = (None if m is None else F.pad(m, (0, 1)) for m in (attn_mask,
                                                                                               key_padding_mask))
        q, k, v = (t.reshape(t.shape[0], bsz * heads, head_dim).transpose(0, 1) for t in (q, k, v))
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(bsz * heads, 1, head_dim)], dim=1) for t in (k, v))
            attn_mask, key_padding_mask = (None if m is None else F.pad(m, (0, 1)) for m in (attn_mask,
                                                                                               key_padding_mask))
        src_len = k.shape[1]
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        if key_padding_mask is not None:
            padding = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
            padding = padding.reshape(bsz * heads, 1, src_len)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        scores = torch.bmm(q * math.sqrt(1.0 / head_dim), k.transpose(1, 2))  # [N*H, L, S]
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = F.dropout(F.softmax(scores, dim=-1), p=self.dropout, training=self.training)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len, bsz, self.embed_dim)
        out = self.out_proj(out)
        if batched and self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = weights.reshape(bsz, heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, (weights if batched else weights.squeeze(0))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


class QuantShiftedWindowAttention(nn.Module):
    """torchvision's Swin ``ShiftedWindowAttention`` (V1) with quantized ``qkv`` and
    ``proj`` (:class:`QuantLinear`): pad to whole windows, cyclic shift, window
    partition, attention with the relative position bias (and the mask that keeps
    shifted windows from attending across the wrap-around), reverse. Input and
    output ``[B, H, W, C]``. Parameter and buffer names are those of torchvision's
    module, so its state dict loads."""

    def __init__(self, qkv: QuantLinear, proj: QuantLinear, window_size: list[int], shift_size: list[int],
                 num_heads: int, relative_position_bias_table: torch.Tensor, relative_position_index: torch.Tensor,
                 attention_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.attention_dropout, self.dropout = num_heads, attention_dropout, dropout
        self.relative_position_bias_table = relative_position_bias_table
        self.register_buffer("relative_position_index", relative_position_index)

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: QConfig) -> "QuantShiftedWindowAttention":
        """From a ``torchvision.models.swin_transformer.ShiftedWindowAttention``."""
        if type(module).__name__ != "ShiftedWindowAttention" or not hasattr(module, "relative_position_bias_table"):
            raise TypeError(f"QuantShiftedWindowAttention.from_float expects torchvision's ShiftedWindowAttention, "
                            f"got {type(module).__name__}")
        new = cls(_quant_linear(module.qkv.weight, module.qkv.bias, qconfig),
                  _quant_linear(module.proj.weight, module.proj.bias, qconfig), module.window_size,
                  module.shift_size, module.num_heads, module.relative_position_bias_table,
                  module.relative_position_index, module.attention_dropout, module.dropout)
        return new.train(module.training)

    def _relative_position_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # [1, heads, N, N]

    def _shift_mask(self, x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
        """``[windows, N, N]``: 0 between positions of one region of the shifted map,
        -100 between positions that the cyclic shift brought together."""
        (wh, ww), (_, hp, wp, _) = self.window_size, x.shape

        def region(size: int, window: int, s: int) -> torch.Tensor:
            pos = torch.arange(size, device=x.device)
            if s == 0:  # an axis without shift is one region
                return torch.zeros_like(pos)
            return (pos >= size - window).long() + (pos >= size - s).long()  # 0, 1, 2 along the axis

        labels = region(hp, wh, shift[0])[:, None] * 3 + region(wp, ww, shift[1])[None, :]
        labels = labels.reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
        different = labels[:, None, :] != labels[:, :, None]
        return torch.zeros(different.shape, dtype=x.dtype, device=x.device).masked_fill(different, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        (wh, ww), heads = self.window_size, self.num_heads
        x = F.pad(x, (0, 0, 0, (-w) % ww, 0, (-h) % wh))
        hp, wp = x.shape[1], x.shape[2]
        # No shift along an axis that one window covers.
        shift = (0 if wh >= hp else self.shift_size[0], 0 if ww >= wp else self.shift_size[1])
        shifted = sum(shift) > 0
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        n_windows, n = (hp // wh) * (wp // ww), wh * ww
        windows = x.reshape(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        qkv = self.qkv(windows).reshape(windows.shape[0], n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // heads) ** -0.5).matmul(k.transpose(-2, -1)) + self._relative_position_bias()
        if shifted:
            attn = attn.reshape(b, n_windows, heads, n, n) + self._shift_mask(x, shift)[None, :, None]
            attn = attn.reshape(-1, heads, n, n)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        out = attn.matmul(v).transpose(1, 2).reshape(windows.shape[0], n, c)
        out = F.dropout(self.proj(out), p=self.dropout, training=self.training)
        out = out.reshape(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shifted:
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        return out[:, :h, :w, :].contiguous()

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}, num_heads={self.num_heads}"
