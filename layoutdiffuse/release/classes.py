"""The release's COCO-stuff class ids: a box's class is its COCO category id minus 1.

Things (ids 1-90) and stuff (92-182) map to 0-181; "other" (183) is dropped. The release's
``num_classes`` is 181, so its prompt table has 182 rows and row 181 is both the null row and the
class of COCO id 182 ("wood"): a quirk of the release. :func:`coco_stuff_class_names` lists the 181
layout classes (index = COCO id - 1; ids COCO leaves unused get ``unused-<id>``), so a layout file
saying ``"person"`` gives the release's index 0; "wood" is not among them, as the release cannot tell
it from "no object".
"""
from __future__ import annotations

from ..errors import UserError

#: the release's num_classes for COCO-stuff
NUM_CLASSES = 181


def coco_category_names() -> dict[int, str]:
    """COCO-stuff 2017 category id -> name (things 1-90, stuff 92-182)."""
    from ..data.coco_stuff import STUFF, THINGS

    return dict(THINGS + STUFF)


def coco_stuff_class_names() -> list[str]:
    """The release's layout class names: entry ``i`` is COCO category id ``i + 1`` (181 entries)."""
    names = coco_category_names()
    return [names.get(i + 1, f"unused-{i + 1}") for i in range(NUM_CLASSES)]


def release_class_id(coco_id: int) -> int:
    """The release's class index of a COCO-stuff category id (``coco_id - 1``)."""
    if not 1 <= coco_id <= NUM_CLASSES:
        raise UserError(f"COCO category id {coco_id} has no release class: ids 1..{NUM_CLASSES} map to id - 1 "
                        f"(id 182 'wood' is the release's null row, 183 'other' was dropped)")
    return coco_id - 1


#: class tables a converted model can carry (``--class-names``)
CLASS_TABLES = {"coco-stuff": coco_stuff_class_names}
