"""Pinned, named evaluation protocols (``coco-stuff-256``, ``coco-stuff-128``, ``vg-256``, the original
release's ``release-coco-256`` / ``release-vg-256``, ``layout-mnist``): :mod:`.spec` (the dataclass and its
hash), :mod:`.catalog` (the named specs), :mod:`.layouts` (layouts and real images from the pinned files),
:mod:`.scoring` (measures with bootstrap intervals). Run one with ``python -m layoutdiffuse
evaluate-protocol NAME`` (:mod:`layoutdiffuse.evaluation.protocol_run`); see ``docs/evaluation.md``.
"""
from .catalog import PROTOCOLS, get_protocol
from .layouts import ProtocolData, layouts_sha256, load_protocol_data
from .spec import Protocol

__all__ = ["PROTOCOLS", "Protocol", "ProtocolData", "get_protocol", "layouts_sha256", "load_protocol_data"]
