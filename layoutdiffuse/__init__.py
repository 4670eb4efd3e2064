"""layoutdiffuse: layout-to-image diffusion (DDPM, improved DDPM, the LayoutDiffuse adaptor)."""
__version__ = "0.1.0"
from .sampling import sample
from .editing import edit
