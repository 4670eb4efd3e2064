"""Loading the original LayoutDiffuse release's checkpoints, exactly.

    model = load_release_unet("cocostuff_SD2_1.ckpt", "config.json")   # a LayoutDiffusersUNet
    eps = model(x, t, {"layout": layout, "context": text})

* :mod:`.checkpoint` -- reading a release ``.ckpt`` without executing code from it;
* :mod:`.config` -- the release's ``model_args`` / ``beta_schedule_args`` in this project's terms;
* :mod:`.convert` -- the ``denoise_fn.*`` keys onto :class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet`;
* :mod:`.classes` -- the release's COCO-stuff class ids (COCO category id - 1) with names;
* :mod:`.export` -- converted checkpoints that :func:`layoutdiffuse.experiment.load_checkpoint` reads.
"""
from .checkpoint import read_release_state_dict
from .config import architecture, diffusion_config, read_release_config
from .convert import convert_release_unet
from .model import build_release_unet, load_release_unet

__all__ = ["architecture", "build_release_unet", "convert_release_unet", "diffusion_config", "load_release_unet",
           "read_release_config", "read_release_state_dict"]
