"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020) and what grew out of them.

Everything the practical needs, from the math up to the pipeline and training:

    schedules and the forward process     make_schedule, Schedule, extract, q_sample, q_posterior
    configs                               RunConfig, ModelConfig, DiffusionConfig, TrainConfig, RuntimeConfig
    the network                           UNet
    denoiser and samplers                 Denoiser, sample_ancestral, sample_ddim, sample_dpmpp_2m, SAMPLERS
    the pipeline                          load_run, Run (.sample, .steps), SamplingOptions, GuidanceOptions
    training                              train, train_step, TrainState

The package's layers, ``LAYERS``, listed from the ground floor up. A module imports only from its own
layer and the ones listed before it (tests/test_layers.py checks every import), so a newcomer can read
the package from the bottom and never meet a name from a floor above.

    errors, io      one-line user errors; atomic writes, safetensors reading, device resolution
    diffusion       schedules, forward process and posterior, parametrizations, losses, likelihood
    runtime         how the network runs: precision, memory format, compilation
    config          typed dataclasses (model, diffusion, train, runtime), saved with every run
    checkpoint      the run folder: config, checkpoint and EMA files
    presets         named configs
    models          the U-Net, its layers, the classifiers (the network knows no diffusion math)
    convert         checkpoints in and out of diffusers' format (Ho et al.'s released models)
    data            data sets as tensors in [-1, 1]
    sampling        denoiser, grids, samplers as step generators, guidance wrappers
    viz             grids, trajectories, GIFs, plots
    pipeline        Run: model + schedule + options -> images, or an iterator of steps
    training        train_step, the loop, EMA, distributed helpers, the classifiers' training
    evaluation      features, FID/KID, precision/recall, NLL
    demo            the web page of a run (Gradio, the optional [demo] extra)
    cli             one module per ``ddpm`` sub-command, flags derived from the configs
"""

from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, RuntimeConfig, TrainConfig
from ddpm.diffusion.process import q_posterior, q_sample
from ddpm.diffusion.schedule import Schedule, extract, make_schedule
from ddpm.errors import UserError
from ddpm.models.unet import UNet
from ddpm.pipeline import GuidanceOptions, Run, SamplingOptions, build_model, build_schedule, load_run
from ddpm.presets import make_config
from ddpm.sampling import SAMPLERS, Step, sample_ancestral, sample_ddim, sample_dpmpp_2m, sample_dpmpp_2m_sde
from ddpm.sampling.denoiser import Denoiser, Prediction
from ddpm.training.loop import train
from ddpm.training.step import TrainState, train_step

LAYERS = ("errors", "io", "diffusion", "runtime", "config", "checkpoint", "presets", "models", "convert", "data",
          "sampling", "viz", "pipeline", "training", "evaluation", "demo", "cli")

__all__ = [
    "SAMPLERS", "Denoiser", "DiffusionConfig", "GuidanceOptions", "ModelConfig", "Prediction", "Run", "RunConfig",
    "RuntimeConfig", "SamplingOptions", "Schedule", "Step", "TrainConfig", "TrainState", "UNet", "UserError",
    "build_model", "build_schedule", "extract", "load_run", "make_config", "make_schedule", "q_posterior", "q_sample",
    "sample_ancestral", "sample_ddim", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "train", "train_step",
]
__version__ = "0.1.0"
