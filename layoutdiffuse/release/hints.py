"""What a converted release model needs before it samples, said as commands a user can run.

:func:`foundation_hint` names the foundation a release model was trained from and how to fetch it
(the published models' table, :data:`~layoutdiffuse.release.published.PUBLISHED`, told apart by
their text encoder's width); :func:`sampling_hint` is the line printed after ``convert-release``:
the ``sample`` command that works for the converted file, or what is missing and how to get it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .config import is_text_model

SCRIPT = "bash data_scripts/download_pretrained_models.sh"
#: text encoder width (the release's ``text_context_dim``) -> the foundation and how to fetch it
TEXT_FOUNDATIONS = {
    768: f"Stable Diffusion 1.5 (`{SCRIPT} sd15` -> $LAYOUTDIFFUSE_DATA/pretrained/stable-diffusion-v1-5)",
    1024: f"Stable Diffusion 2.1-base (`{SCRIPT} sd21` -> $LAYOUTDIFFUSE_DATA/pretrained/stable-diffusion-2-1-base)",
    1280: "the LAION text-to-image LDM (the diffusers folder of CompVis/ldm-text2im-large-256, fetched by hand: "
          "unet/, vqvae/, bert/, tokenizer/, scheduler/; see docs/published_models.md)",
}
MASK_FOUNDATION = f"the CelebA-HQ LDM (`{SCRIPT} ldm-celebahq` -> $LAYOUTDIFFUSE_DATA/pretrained/ldm-celebahq-256)"


def foundation_hint(model_args: Mapping[str, Any]) -> str:
    """The foundation of a release model (its ``model_args``) and how to fetch it, in one phrase."""
    if not is_text_model(model_args):
        return MASK_FOUNDATION
    width = model_args.get("text_context_dim") or model_args.get("context_dim")
    if width in TEXT_FOUNDATIONS:
        return TEXT_FOUNDATIONS[width]
    return (f"the text foundation it was trained from (text width {width}; the published ones: "
            + "; ".join(TEXT_FOUNDATIONS.values()) + ")")


def sampling_hint(release_config: Any, out: str | Path, with_foundation: bool, prog: str = "layoutdiffuse",
                  convert_again: str = "convert again with --foundation FOLDER") -> str:
    """The line printed after converting ``release_config`` to ``out``: a ``sample`` command that works
    for it, or (a text model converted without its foundation) what is missing and how to get it.
    ``convert_again``: the conversion command with ``--foundation FOLDER`` added."""
    from .config import architecture, read_release_config

    release = read_release_config(release_config)
    model_args = release["model_args"]
    mask = architecture(release)["layout"]["mask"]
    text = is_text_model(model_args)
    if text and not with_foundation:
        return (f"{out} holds the UNet only, and this model reads text: it cannot sample without its text encoder. "
                f"Fetch its foundation, {foundation_hint(model_args)}, then {convert_again}")
    command = f"{prog} sample --ckpt {out}"
    if mask:
        command, what = command + " --mask MASK.png", "MASK.png: a PNG of part ids, e.g. a CelebAMask-HQ-mask/<i>.png label map"
    else:
        command, what = command + " --layout LAYOUT.json", 'LAYOUT.json: [{"label": ..., "box": [x, y, w, h]}, ...]'
    if text:
        command += ' --prompt "a caption"'
    line = f"sample it with: {command}   ({what})"
    if not with_foundation:
        line += (f" -- without --foundation it samples latents, not pictures: for pictures fetch {foundation_hint(model_args)} "
                 f"and {convert_again}")
    return line
