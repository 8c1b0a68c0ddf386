"""The paper's multitask model: a WaveNet feature extractor shared by a next-frame
reconstruction head and a ResNet-18 machine-id classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Model dimensions; stored in every checkpoint and bundle and rebuilt from there."""

    n_mels: int = 128
    n_classes: int = 1
    residual_channels: int = 64
    skip_channels: int = 128
    kernel_size: int = 2
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)
    resnet_width: int = 64
    resnet_blocks: tuple[int, ...] = (2, 2, 2, 2)
    window: int = 313  # frames per training/inference window
    head: str = "softmax"  # or "arcface": cosine logits with an additive angular margin in training
    arcface_scale: float = 16.0
    arcface_margin: float = 0.5  # radians, applied in proportion to each soft label

    @property
    def receptive_field(self) -> int:
        """Frames of input that one prediction sees (current frame included)."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    @property
    def warmup(self) -> int:
        """Leading frames of a window whose prediction lacks full context; never scored."""
        return self.receptive_field - 1

    def __post_init__(self):
        if self.head not in ("softmax", "arcface"):
            raise ValueError(f"head must be softmax or arcface, got {self.head!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        d["resnet_blocks"] = list(self.resnet_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)  # checkpoints from before the head option have no head keys: their defaults apply
        d["dilations"] = tuple(d["dilations"])
        d["resnet_blocks"] = tuple(d["resnet_blocks"])
        return cls(**d)


class ResidualBlock(nn.Module):
    """Causal dilated conv -> tanh * sigmoid gate -> residual and skip 1x1 convs."""

    def __init__(self, channels: int, skip_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation)
        self.residual = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, skip_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(F.pad(x, (self.pad, 0)))  # left padding only: causal
        a, b = h.chunk(2, dim=1)
        h = torch.tanh(a) * torch.sigmoid(b)
        return x + self.residual(h), self.skip(h)


class WaveNet(nn.Module):
    """Residual-block stack over time; returns the shared feature (B, skip_channels, T)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input = nn.Conv1d(cfg.n_mels, cfg.residual_channels, 1)
        self.blocks = nn.ModuleList(
            ResidualBlock(cfg.residual_channels, cfg.skip_channels, cfg.kernel_size, d) for d in cfg.dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)  # (B, R, T)
        skips = 0
        for block in self.blocks:
            h, s = block(h)
            skips = skips + s
        return F.relu(skips)  # (B, S, T)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ArcFaceHead(nn.Module):
    """Cosine logits ``s * cos(theta_k)`` between the embedding and each class's weight vector.

    In training, :meth:`margin_logits` adds the ArcFace angular margin ``m`` to the angle of the
    labelled class(es), scaled by the soft label, which pulls each id's embeddings together.
    """

    def __init__(self, in_features: int, n_classes: int, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, in_features) * 0.01)
        self.scale, self.margin = scale, margin

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(x)

    def margin_logits(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(self.cosine(x).clamp(-1 + 1e-6, 1 - 1e-6))
        return self.scale * torch.cos((theta + self.margin * target).clamp(max=torch.pi))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (BasicBlock x [2,2,2,2]) with a configurable width."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 head: str = "softmax", arcface_scale: float = 16.0, arcface_margin: float = 0.5):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers, ch = [], width
        for i, n in enumerate(blocks):
            out = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(ch, out, 2 if (j == 0 and i > 0) else 1))
                ch = out
        self.layers = nn.Sequential(*layers)
        self.embedding_dim = ch
        self.fc = ArcFaceHead(ch, n_classes, arcface_scale, arcface_margin) if head == "arcface" else nn.Linear(ch, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))  # (B, C, H', W')
        return h.mean(dim=(2, 3))  # global average pool -> (B, C)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, n_classes), embedding (B, C))``."""
        e = self.embed(x)
        return self.fc(e), e


class MultitaskModel(nn.Module):
    """Input normalised log-mel (B, n_mels, T) -> (next-frame prediction (B, n_mels, T), logits (B, K),
    embedding (B, E): the ResNet's pooled feature, for the ``embed`` score).

    ``prediction[:, :, t]`` estimates ``input[:, :, t + 1]`` from frames up to t.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wavenet = WaveNet(cfg)
        self.recon_head = nn.Sequential(
            nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1), nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.n_mels, 1)
        )
        self.classifier = ResNet18(1, cfg.n_classes, cfg.resnet_width, cfg.resnet_blocks, cfg.head, cfg.arcface_scale, cfg.arcface_margin)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self.wavenet(x)  # (B, S, T)
        pred = self.recon_head(feat)  # (B, n_mels, T)
        logits, embedding = self.classifier(feat.unsqueeze(1))  # feature map as a 1-channel image (B, 1, S, T)
        return pred, logits, embedding

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction only (skips the ResNet), for the reconstruction-only ablation."""
        return self.recon_head(self.wavenet(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
