"""The MNIST toy's training classes: the seed's ``process_batch`` override, verbatim."""
from .ddim import DDIMTraining
from .ddpm import DDPMTraining


class DDPM_MNIST(DDPMTraining):
    """torchvision MNIST yields ``(image, label)``; drop the label and train on images."""

    def process_batch(self, y_0, mode='train'):
        return super().process_batch(y_0[0], mode)


class DDIM_MNIST(DDIMTraining):
    """Improved DDPM (learned variance) on torchvision MNIST: the same ``(image, label)`` override."""

    def process_batch(self, y_0, mode='train'):
        return super().process_batch(y_0[0], mode)
