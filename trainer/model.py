"""A SeizureTransformer-style per-sample seizure detector (Wu et al., 2025), in two sizes.

Shape of the network, and why: a 1-D convolutional U-Net encoder (large kernels first, halving the time axis per
stage) turns 19 x T raw EEG into a short sequence of rich features; residual CNN blocks deepen it cheaply; a
transformer encoder with sinusoidal positions gives every bottleneck step global context over the whole window
(seizures are judged by their evolution, not one spike); a decoder with skip connections upsamples back to the
input length so the output is one logit per input sample: no window-to-event post-processing beyond smoothing.

The network returns logits; train with ``BCEWithLogitsLoss`` (numerically safer than sigmoid + BCE) and apply
``torch.sigmoid`` for probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the architecture; stored in checkpoints so a model can be rebuilt from one."""

    in_channels: int = 19
    filters: tuple[int, ...] = (32, 64, 128, 256, 512)  # one encoder stage per entry, each halves the time axis
    kernels: tuple[int, ...] = (11, 9, 7, 7, 5)  # large to small: wide receptive field while the signal is long
    res_blocks: int = 7
    res_kernel: int = 3
    layers: int = 8
    heads: int = 4
    ff: int = 2048
    dropout: float = 0.1
    out_kernel: int = 11
    # Added for the reference's constants (preset ``seizure-transformer``); the defaults rebuild ``tiny``/``base``
    # and every checkpoint written before they existed exactly.
    res_kernels: tuple[int, ...] | None = None  # one kernel per residual block; None: res_blocks x res_kernel
    decoder_kernels: tuple[int, ...] | None = None  # one per decoder stage; None: the encoder's kernels reversed
    bn_eps: float = 1e-5  # BatchNorm epsilon of the residual blocks
    pos_dropout: float = 0.0  # dropout on (features + positions) before the transformer

    def __post_init__(self) -> None:
        for name in ("filters", "kernels", "res_kernels", "decoder_kernels"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if len(self.filters) != len(self.kernels) or not self.filters:
            raise ValueError("filters and kernels must have the same, non-zero length")
        if self.res_kernels is not None and len(self.res_kernels) != self.res_blocks:
            raise ValueError(f"res_kernels {self.res_kernels} must give one kernel per residual block ({self.res_blocks})")
        if self.decoder_kernels is not None and len(self.decoder_kernels) != len(self.filters):
            raise ValueError(f"decoder_kernels {self.decoder_kernels} must give one kernel per stage ({len(self.filters)})")
        if not 0 <= self.pos_dropout < 1 or self.bn_eps <= 0:
            raise ValueError("pos_dropout must lie in [0, 1) and bn_eps must be > 0")
        if self.filters[-1] % self.heads:
            raise ValueError(f"d_model (last filter count {self.filters[-1]}) must be divisible by heads ({self.heads})")

    @property
    def d_model(self) -> int:
        return self.filters[-1]

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.filters)

    @property
    def block_kernels(self) -> tuple[int, ...]:
        return self.res_kernels if self.res_kernels is not None else (self.res_kernel,) * self.res_blocks

    @property
    def up_kernels(self) -> tuple[int, ...]:
        return self.decoder_kernels if self.decoder_kernels is not None else self.kernels[::-1]

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("filters", "kernels", "res_kernels", "decoder_kernels"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**dict(data))


PRESETS: dict[str, ModelConfig] = {
    # Trains on a 2-core CPU in the tests (~35 k parameters) and still has every part of the architecture.
    "tiny": ModelConfig(filters=(8, 8, 16, 16, 32), kernels=(11, 9, 7, 7, 5), res_blocks=2, layers=1, heads=2, ff=64,
                        dropout=0.1),
    # Paper scale: 19 x 15,360 -> 480 bottleneck steps (5 halvings), 7 residual blocks, 8 layers, d_model 512,
    # 4 heads, feed-forward 2048.
    "base": ModelConfig(),
    # The reference code's constants (keruiwu/SeizureTransformer, time_step_level/model.py and wu_2025/): residual
    # stack kernels 3,3,3,3,2,3,2 (a kernel-2 block pads one zero on the right, as "same" does here), decoder
    # kernels 3,5,5,7,7 (its kernel list 11,9,7,7,5,5,3 reversed, first five), BatchNorm eps 1e-3, dropout 0.1 on
    # the positional encoding. 37,848,897 parameters for 19 input channels, 37,848,545 for 18.
    "seizure-transformer": ModelConfig(res_kernels=(3, 3, 3, 3, 2, 3, 2), decoder_kernels=(3, 5, 5, 7, 7),
                                       bn_eps=1e-3, pos_dropout=0.1),
}


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions (Vaswani et al.): no parameters, any length up to ``max_len``."""

    def __init__(self, d_model: int, max_len: int = 16384, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, steps, d_model]
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} steps is longer than the {self.table.shape[0]} positions")
        return self.dropout(x + self.table[: x.shape[1]].to(x.dtype))


class ResBlock(nn.Module):
    """Pre-activation residual block (BN → ReLU → dropout → conv, twice): depth at the bottleneck without
    vanishing gradients."""

    def __init__(self, channels: int, kernel: int, dropout: float, eps: float = 1e-5) -> None:
        super().__init__()
        # padding "same" with an even kernel pads (k - 1) // 2 on the left and the rest on the right (kernel 2: one
        # zero on the right, TensorFlow's "same", which the reference emulates by hand).
        self.body = nn.Sequential(
            nn.BatchNorm1d(channels, eps=eps), nn.ReLU(), nn.Dropout1d(dropout),
            nn.Conv1d(channels, channels, kernel, padding="same"),
            nn.BatchNorm1d(channels, eps=eps), nn.ReLU(), nn.Dropout1d(dropout),
            nn.Conv1d(channels, channels, kernel, padding="same"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SeizureTransformer(nn.Module):
    """[batch, channels, samples] EEG → [batch, samples] seizure logits (any length; odd lengths are padded)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PRESETS["base"]
        widths = (config.in_channels, *config.filters)
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.ELU())
            for c_in, c_out, k in zip(widths[:-1], widths[1:], config.kernels, strict=True)
        )
        self.res = nn.Sequential(*(ResBlock(config.d_model, k, config.dropout, config.bn_eps)
                                   for k in config.block_kernels))
        self.positions = SinusoidalPositions(config.d_model, dropout=config.pos_dropout)
        layer = nn.TransformerEncoderLayer(config.d_model, config.heads, config.ff, config.dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        # Decoder stage i mirrors encoder stage n-1-i: upsample x2, conv to that stage's width, add its skip.
        rev_f, rev_k = config.filters[::-1], config.up_kernels
        dec_in = (config.d_model, *rev_f[:-1])
        self.decoder = nn.ModuleList(
            nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.ELU())
            for c_in, c_out, k in zip(dec_in, rev_f, rev_k, strict=True)
        )
        self.head = nn.Conv1d(config.filters[0], 1, config.out_kernel, padding=config.out_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected [batch, {self.config.in_channels}, samples], got {list(x.shape)}")
        n = x.shape[-1]
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            if x.shape[-1] % 2:  # keep every sample: pad the odd one out instead of dropping it
                x = F.pad(x, (0, 1), mode="replicate")
            x = F.max_pool1d(x, 2)
        x = self.res(x)
        seq = self.transformer(self.positions(x.transpose(1, 2)))
        x = x + seq.transpose(1, 2)  # the residual path keeps the local CNN features next to the global context
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")[..., : skip.shape[-1]]
            x = stage(x) + skip
        return self.head(x)[:, 0, :n]


def preset_config(preset: str, in_channels: int | None = None) -> ModelConfig:
    """A preset's configuration, for ``in_channels`` input channels when given (18 for a double-banana pipeline)."""
    try:
        config = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}") from None
    return config if in_channels is None else replace(config, in_channels=int(in_channels))


def build_model(preset: str | ModelConfig = "tiny", in_channels: int | None = None) -> SeizureTransformer:
    if isinstance(preset, ModelConfig):
        return SeizureTransformer(preset if in_channels is None else replace(preset, in_channels=int(in_channels)))
    return SeizureTransformer(preset_config(preset, in_channels))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
