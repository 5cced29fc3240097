"""The golden sampling cases: tiny fixed models and every sampler, with and without guidance.

``tests/golden/samples.safetensors`` holds the weights of these models and the samples that the code
before the pipeline redesign drew for every case (recorded at commit e46ccf2 with ``ddpm.api.sample_images``);
``tests/test_golden.py`` draws them again through today's pipeline and compares bit for bit.
"""

from __future__ import annotations

import torch

from ddpm.config import ModelConfig, RunConfig, derive
from ddpm.models.classifier import NoisyClassifier
from ddpm.models.unet import UNet

T = 20
# Every case runs the network in float32, contiguous and uncompiled: the options a CPU without bf16 gets.
FIXED = dict(precision="fp32", memory_format="contiguous", compile="none")


def run_config(**diffusion) -> RunConfig:
    cfg = RunConfig()
    cfg.model = ModelConfig(image_size=(8, 8), in_channels=1, base_channels=8, channel_mult=(1, 2),
                            num_res_blocks=1, attention_resolutions=(4,), num_heads=2, dropout=0.0, norm_groups=4)
    cfg.diffusion.timesteps = T
    for k, v in diffusion.items():
        setattr(cfg.diffusion, k, v)
    return derive(cfg)


def build_models(seed: int = 0) -> dict[str, tuple[torch.nn.Module, RunConfig]]:
    """name -> (model in eval mode, its RunConfig); the weights are random from ``seed`` (the golden file
    stores them, so later changes to initialisation do not matter)."""
    torch.manual_seed(seed)
    specs = {"uncond": run_config(), "cond": run_config(), "learned": run_config(variance="learned_range",
             loss="hybrid"), "x0": run_config(prediction="x0"), "v": run_config(prediction="v")}
    specs["cond"].model.num_classes = 3
    models = {name: (UNet(cfg.model).eval(), cfg) for name, cfg in specs.items()}
    ccfg = run_config()
    ccfg.model.num_classes = 3
    models["classifier"] = (NoisyClassifier(ccfg.model).eval(), ccfg)
    return models


Y = [0, 1, 2]
CASES: dict[str, dict] = {
    "ancestral_full": dict(model="uncond", options=dict(sampler="ancestral"), trajectory=True),
    "ancestral_5": dict(model="uncond", options=dict(sampler="ancestral", steps=5)),
    "ancestral_beta_tilde": dict(model="uncond", options=dict(sampler="ancestral", variance="beta_tilde")),
    "ancestral_learned": dict(model="learned", options=dict(sampler="ancestral", steps=7)),
    "ddim_5": dict(model="uncond", options=dict(sampler="ddim", steps=5), trajectory=True),
    "ddim_eta1_even": dict(model="uncond", options=dict(sampler="ddim", steps=5, eta=1.0, grid="even")),
    "ddim_noclip": dict(model="uncond", options=dict(sampler="ddim", steps=5, clip_x0=False)),
    "ddim_x0": dict(model="x0", options=dict(sampler="ddim", steps=5)),
    "ddim_v": dict(model="v", options=dict(sampler="ddim", steps=5)),
    "dpmpp_5": dict(model="uncond", options=dict(sampler="dpm++2m", steps=5)),
    "dpmpp_logsnr": dict(model="uncond", options=dict(sampler="dpm++2m", steps=6, grid="logsnr")),
    "dpmpp_sde_5": dict(model="uncond", options=dict(sampler="dpm++2m-sde", steps=5), trajectory=True),
    "cond_ancestral": dict(model="cond", options=dict(sampler="ancestral", steps=5, y=Y)),
    "cfg_ancestral": dict(model="cond", options=dict(sampler="ancestral", steps=5, y=Y, guidance=2.0)),
    "cfg_ddim": dict(model="cond", options=dict(sampler="ddim", steps=5, y=Y, guidance=2.0)),
    "cfg_dpmpp": dict(model="cond", options=dict(sampler="dpm++2m", steps=5, y=Y, guidance=1.5)),
    "cfg_dpmpp_sde": dict(model="cond", options=dict(sampler="dpm++2m-sde", steps=5, y=Y, guidance=1.5)),
    "classifier_ancestral": dict(model="uncond", options=dict(sampler="ancestral", steps=5, y=Y, classifier=True,
                                                              classifier_scale=3.0)),
    "classifier_ancestral_full": dict(model="uncond", options=dict(sampler="ancestral", y=Y, classifier=True,
                                                                   classifier_scale=3.0)),
    "classifier_ddim": dict(model="uncond", options=dict(sampler="ddim", steps=5, y=Y, classifier=True,
                                                         classifier_scale=3.0)),
    "cfg_classifier_ancestral": dict(model="cond", options=dict(sampler="ancestral", steps=5, y=Y, guidance=1.0,
                                                                classifier=True, classifier_scale=2.0)),
    "interp_seeds_ddim": dict(model="uncond", kind="interp_seeds", options=dict(sampler="ddim", steps=5)),
    "interp_seeds_ancestral": dict(model="uncond", kind="interp_seeds", options=dict(sampler="ancestral", steps=5)),
    "interp_images": dict(model="uncond", kind="interp_images", options=dict(sampler="ancestral", sampling_steps=10)),
}
