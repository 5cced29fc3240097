"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020) and what grew out of them."""

from ddpm.api import Run, build_model, build_schedule, load_run, sample_images
from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.diffusion.process import q_posterior, q_sample
from ddpm.diffusion.schedule import Schedule, extract, make_schedule
from ddpm.errors import UserError
from ddpm.models.unet import UNet

__all__ = [
    "DiffusionConfig", "ModelConfig", "Run", "RunConfig", "Schedule", "TrainConfig", "UNet", "UserError",
    "build_model", "build_schedule", "extract", "load_run", "make_schedule", "q_posterior", "q_sample",
    "sample_images",
]
__version__ = "0.1.0"
