"""Small models and configs shared by the QAT tests."""

import torch
from torch import nn

import quantext as qx
from quantext.spec import QConfig, QuantSpec

INPUT_SHAPE = (4, 3, 12, 12)


class ResidualCNN(nn.Module):
    """Conv-BN-ReLU stem, a residual block (add quantizers), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.head(self.relu(x + y).mean((2, 3)))


def learnable_qconfig(bits: int = 4) -> QConfig:
    """LSQ weights and LSQ+ (asymmetric) activations."""
    return QConfig(weight=QuantSpec(bits=bits, narrow_range=True, granularity="channel", learnable=True,
                                    calibration="max"),
                   activation=QuantSpec(bits=bits, signed=False, symmetric=False, learnable=True,
                                        calibration="max"))


def prepared_cnn(seed: int, **options) -> nn.Module:
    torch.manual_seed(seed)
    return qx.prepare_qat(ResidualCNN(), learnable_qconfig(), example_inputs=(torch.randn(INPUT_SHAPE),),
                          first_last_bits=None, **options)


def batches(seed: int, count: int, scale: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(INPUT_SHAPE, generator=g) * scale, torch.randint(0, 5, (INPUT_SHAPE[0],), generator=g))
            for _ in range(count)]


def train(model: nn.Module, opt: torch.optim.Optimizer, data) -> None:
    model.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
