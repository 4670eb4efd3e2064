"""Networks: blocks, the UNet, and the LayoutDiffuse adaptor."""
from .adaptor import LayoutAdaptor, LayoutAttention, TaskPromptAttention, box_prompt_map, mask_prompt_map, rasterize_boxes
from .blocks import ATTN_BLOCKS, RES_BLOCKS, AttentionBlock, ConditionBlock, EmbedBlock, ResBlock, ScaleShiftResBlock
from .unet import UNet

__all__ = ["ATTN_BLOCKS", "RES_BLOCKS", "AttentionBlock", "ConditionBlock", "EmbedBlock", "ResBlock", "ScaleShiftResBlock", "UNet",
           "LayoutAdaptor", "LayoutAttention", "TaskPromptAttention", "box_prompt_map", "mask_prompt_map", "rasterize_boxes"]
