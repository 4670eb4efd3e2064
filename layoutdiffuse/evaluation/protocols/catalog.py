"""The named protocols. Facts about the published protocols and their sources: ``docs/evaluation.md``."""
from __future__ import annotations

from ...errors import UserError
from .spec import Protocol

BOOTSTRAP = {"resamples": 200, "level": 0.95, "seed": 0}
MNIST_TEST = {"MNIST/raw/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
              "MNIST/raw/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"}
#: sha256 of the COCO 2017 annotation files: not computed here (the data cannot be downloaded on the
#: development machine); a run records the hashes it finds
COCO_VAL = {"coco/annotations/instances_val2017.json": None, "coco/annotations/stuff_val2017.json": None}
VG_PROCESSED = {"vg/processed/vocab.json": None, "vg/processed/test.npz": None}
CLEAN_FID = {"implementation": "clean-fid", "mode": "clean", "features": "Inception-v3 pool3 (2048)",
             "reference": "the protocol's real images at its resolution, as PNG"}
LOSTGAN_COCO = {"min_object_size": 0.02, "min_objects": 3, "max_objects": 8, "crowd": "drop", "stuff_only": True}


def _coco(resolution: int) -> Protocol:
    return Protocol(
        name=f"coco-stuff-{resolution}", dataset="coco_stuff", split="val", resolution=resolution, samples_per_layout=5, layouts=3097,
        description=f"COCO-stuff 2017 val, images with 3-8 objects (LostGAN / LAMA filter), 3,097 layouts x 5 samples, {resolution} px",
        source="LostGAN-v2 (Sun & Wu, TPAMI 2021); LAMA (Li et al., ICCV 2021) Sec. 5.1; LayoutDiffusion (Zheng et al., CVPR 2023)",
        dataset_args=LOSTGAN_COCO, source_files=dict(COCO_VAL), fid=CLEAN_FID, detector="yolo-score (a COCO-trained detector, injected)",
        bootstrap=BOOTSTRAP,
        notes="FID against the 3,097 real val images resized to the resolution (LAMA); the detector and Inception weights are fetched on a "
              "user's machine, never here")


def _release(short: str, dataset: str, dataset_args: dict, files: dict, description: str, source: str, reference: str,
             notes: str) -> Protocol:
    """The original release's own evaluation of one dataset: val split, 256 px, one sample per layout, clean-fid, no detector."""
    return Protocol(name=f"release-{short}-256", dataset=dataset, split="val", resolution=256, samples_per_layout=1, layouts=None,
                    description=description, source=source, dataset_args=dataset_args, source_files=dict(files),
                    fid={**CLEAN_FID, "reference": reference}, detector=None, metrics=("fid", "diversity"), bootstrap=BOOTSTRAP,
                    notes=notes)


def _colour_mnist(pairs: str, layouts_sha256: str | None) -> Protocol:
    """Colour Layout-MNIST with a phrase per box, on the training's (seen) or the ten held-out (digit, colour) pairs."""
    held_out = pairs == "held_out"
    return Protocol(
        name="layout-mnist-color" + ("-held-out" if held_out else ""), dataset="layout_mnist_color", split="val", resolution=32,
        samples_per_layout=2, layouts=250,
        description=("Colour Layout-MNIST validation layouts (MNIST-test digits, 1-5 per canvas, a phrase per box), every digit in "
                     + ("its held-out colour (the ten (digit, colour) pairs no training canvas shows)" if held_out else
                        "one of the fifty training (digit, colour) pairs") + ", 250 layouts x 2 samples, 32 px"),
        source="this project (docs/evaluation.md, docs/text_layouts.md)",
        dataset_args={"seed": 0, "pairs": pairs, "min_digits": 1, "max_digits": 5, "digit_scale": [0.3, 0.9], "scale_spacing": "log"},
        source_files=dict(MNIST_TEST), layouts_sha256=layouts_sha256,
        fid={"implementation": "digit-fid", "mode": "DigitClassifier trunk, global average pool (128-d), on the grey canvas (max over channels)",
             "features": "layoutdiffuse/evaluation/weights/digit_classifier.safetensors",
             "reference": "real validation canvases 250..499 of the same pairs (disjoint from the layouts' own canvases)"},
        detector="layout-mnist-centres v2 on the grey canvas (max over channels)", bootstrap=BOOTSTRAP,
        metrics=("fid", "detection", "layout_accuracy", "colour_accuracy", "both_accuracy", "diversity"),
        notes="colour and both-correct accuracy are the colour judge's (layoutdiffuse.evaluation.color_judge): a box counts when its "
              "ink has the asked colour and, for both, the crop judge reads the asked digit and the detector finds exactly one digit "
              "in it; FID, detection, layout accuracy and diversity see the grey canvas")


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    _coco(256),
    _coco(128),
    Protocol(
        name="vg-256", dataset="visual_genome", split="test", resolution=256, samples_per_layout=1, layouts=5097,
        description="Visual Genome (sg2im split and vocabulary), test layouts with 3-30 objects, 5,097 layouts x 1 sample, 256 px",
        source="LostGAN (Sun & Wu, ICCV 2019): one sample per VG layout; LayoutDiffusion (Zheng et al., CVPR 2023)",
        dataset_args={"min_object_size": 0.02, "min_objects": 3, "max_objects": 30}, source_files=dict(VG_PROCESSED), fid=CLEAN_FID,
        detector="yolo-score (a VG-trained detector, injected)", bootstrap=BOOTSTRAP,
        notes="5,097 is the layout count this protocol expects; whether this project's VG filter gives exactly 5,097 test layouts "
              "could not be checked here (no VG data)"),
    _release("coco", "coco_stuff", LOSTGAN_COCO, COCO_VAL,
             description="The original LayoutDiffuse release's COCO-stuff evaluation as its code runs it: val layouts, 256 px (the "
                         "LAION-LDM 'cocostuff' model), PLMS 100 steps, clean-fid compute_fid (mode 'clean') between folders",
             source="cplusx/layout_diffuse: fid_eval.py (clean-fid), configs/cocostuff.json; issue #4 (the paper's FID not reproduced)",
             reference="val images resized to 256 (fid_eval.py --resize_s)",
             notes="the release states neither its layout count nor samples per layout; its own loader's filter is not reproduced "
                   "here (this protocol uses the LostGAN filter); pass --limit or fix the count before comparing"),
    _release("vg", "visual_genome", {"min_object_size": 0.02, "min_objects": 3, "max_objects": 30}, VG_PROCESSED,
             description="The original LayoutDiffuse release's Visual Genome evaluation as its code runs it: val split, 256 px, PLMS "
                         "100 steps, clean-fid compute_fid (mode 'clean')",
             source="cplusx/layout_diffuse: configs/vg.json (image_size 256, val split, plms, fast_sampling_steps 100), fid_eval.py",
             reference="val images resized to 256", notes="layout count and samples per layout are not stated by the release"),
    Protocol(
        name="layout-mnist", dataset="layout_mnist", split="val", resolution=32, samples_per_layout=2, layouts=500,
        description="Layout-MNIST validation layouts (MNIST-test digits, 1-3 per canvas), 500 layouts x 2 samples, 32 px",
        source="this project (docs/evaluation.md)",
        dataset_args={"seed": 0}, source_files=dict(MNIST_TEST),
        layouts_sha256="a123b37a20b4ccfb28a5f2bd1da22f30e574007f1d65bc951523332557160c31",
        fid={"implementation": "digit-fid", "mode": "DigitClassifier trunk, global average pool (128-d)",
             "features": "layoutdiffuse/evaluation/weights/digit_classifier.safetensors",
             "reference": "real validation canvases 500..999 (disjoint from the layouts' own canvases)"},
        detector="layout-mnist-centres v2 (DigitLocator trained with touching rows + crop judge, two classes per box)", bootstrap=BOOTSTRAP,
        notes="diversity is digit-LPIPS between the 2 samples of each layout (the LPIPS formula on the digit classifier's trunk; "
              "AlexNet LPIPS weights are not available here)"),
    _colour_mnist("seen", "3a739b50824cc17819b275b9fe792f461a6c2916e89e9287e05e467169b4e8c5"),
    _colour_mnist("held_out", "9436fe668ae4bfe4e859ba1925ceeec281e379674a4f1330610a4047d2f657a7"),
)}


def get_protocol(name: str) -> Protocol:
    """The named protocol, or a :class:`UserError` listing the names."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UserError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}") from None
