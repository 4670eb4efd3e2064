"""Networks: blocks, the UNet, and the LayoutDiffuse adaptor."""
from .blocks import ATTN_BLOCKS, RES_BLOCKS, AttentionBlock, ConditionBlock, EmbedBlock, ResBlock, ScaleShiftResBlock
from .unet import UNet

__all__ = ["ATTN_BLOCKS", "RES_BLOCKS", "AttentionBlock", "ConditionBlock", "EmbedBlock", "ResBlock", "ScaleShiftResBlock", "UNet"]
