"""The record of where each fake-quant call of a model ended up in its ONNX
graph: written by the lowering (:mod:`.qdq_rules`, via :mod:`.onnx_export`)
into the model's metadata, read by verification (:mod:`.verify`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import onnx

RECORD_KEY = "quantext.quantizers"


@dataclass
class QuantizerRecord:
    """Where one fake-quant call of the model ended up in the ONNX graph."""

    tensor: str  # the tensor holding its output
    module: str  # the module path that called it
    step: list[float]  # quantization step (the largest, for a level table): one value or one per index of axis
    axis: int | None
    uniform: bool  # outputs are multiples of ``step`` apart


def write_record(model: onnx.ModelProto, record: dict[int, QuantizerRecord]) -> None:
    """Stores the quantizers (by call index) in the model's metadata."""
    entry = onnx.StringStringEntryProto(key=RECORD_KEY,
                                        value=json.dumps({str(k): asdict(v) for k, v in record.items()}))
    model.metadata_props.append(entry)


def read_record(model: onnx.ModelProto) -> dict[int, QuantizerRecord]:
    """The quantizers that :func:`write_record` stored (empty when there are none)."""
    for prop in model.metadata_props:
        if prop.key == RECORD_KEY:
            return {int(k): QuantizerRecord(**v) for k, v in json.loads(prop.value).items()}
    return {}
