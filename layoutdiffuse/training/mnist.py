"""The MNIST toy's training classes: the seed's ``process_batch`` override, plus class labels for
class-conditional UNets (``denoising_model.num_classes``)."""
from typing import Any

from .ddim import DDIMTraining
from .ddpm import DDPMTraining


def mnist_inputs(module: DDPMTraining, batch: Any, mode: str) -> dict[str, Any]:
    """torchvision MNIST yields ``(image, label)``: train on the images, conditioned on the labels
    when the model is class-conditional."""
    images, labels = batch[0], batch[1]
    inputs = DDPMTraining.process_batch(module, images, mode)
    if getattr(module.model, "num_classes", None):
        inputs["cond"] = {"label": labels}
    return inputs


class DDPM_MNIST(DDPMTraining):
    """DDPM on torchvision MNIST ``(image, label)`` pairs."""

    def process_batch(self, y_0, mode='train'):
        return mnist_inputs(self, y_0, mode)


class DDIM_MNIST(DDIMTraining):
    """Improved DDPM (learned variance) on torchvision MNIST ``(image, label)`` pairs."""

    def process_batch(self, y_0, mode='train'):
        return mnist_inputs(self, y_0, mode)
