"""The metadata every checkpoint and weights export carries, so that it rebuilds its own module
(plain data only; no Lightning, so that a file can be read without importing it)."""
from __future__ import annotations

from typing import Any

#: the checkpoint entry holding what rebuilds a module (config, architecture, image shape, class names)
CKPT_KEY = "layoutdiffuse"


def checkpoint_meta(module: Any) -> dict[str, Any]:
    """What a checkpoint needs to rebuild ``module`` (a training module or a
    :class:`~layoutdiffuse.training.sampling_module.SamplingModule`): config, architecture, image shape, class names."""
    return {"config": module.config, "model": module.model.config, "image_shape": list(module.image_shape),
            "class_names": list(module.class_names)}
