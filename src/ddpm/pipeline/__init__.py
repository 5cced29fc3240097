"""The sampling pipeline: a ``Run`` (model + config + schedule) and the option objects of a sampling call.

    schedule -> model -> denoiser -> sampler -> pipeline -> CLI

``Run.steps`` yields every step (t, x_t, predicted x0); ``Run.sample`` returns the final images.
"""

from ddpm.pipeline.interpolation import interpolate_images, interpolate_seeds, slerp
from ddpm.pipeline.options import GuidanceOptions, SamplingOptions
from ddpm.pipeline.run import Run, Steps, build_model, build_schedule, load_run

__all__ = ["GuidanceOptions", "Run", "SamplingOptions", "Steps", "build_model", "build_schedule",
           "interpolate_images", "interpolate_seeds", "load_run", "slerp"]
