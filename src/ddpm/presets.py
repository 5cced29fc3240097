"""Named starting points: a model sized for a resolution plus training settings that suit it.

``digits`` is the default and is sized to train on a laptop CPU; ``ddpm-cifar10`` is Ho et al.'s
CIFAR-10 network exactly (35.7M parameters), so the published checkpoints load into it.
"""

from __future__ import annotations

from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig, derive
from ddpm.errors import UserError

PRESETS: dict[str, dict] = {
    # 8x8 scikit-learn digits.
    "digits": dict(
        model=dict(image_size=(8, 8), in_channels=1, base_channels=32, channel_mult=(1, 2),
                   num_res_blocks=2, attention_resolutions=(4,), num_heads=4, dropout=0.1, norm_groups=8),
        train=dict(data="digits", steps=2500, batch_size=128, lr=1e-3, ema_decay=0.999,
                   num_sample_images=36),
    ),
    # 28x28 MNIST / Fashion-MNIST, sized to train on a 2-core CPU in well under an hour
    # (benchmarks/quality.py --data mnist measures it: benchmarks/results/mnist_default/).
    "mnist": dict(
        model=dict(image_size=(28, 28), in_channels=1, base_channels=32, channel_mult=(1, 2, 2),
                   num_res_blocks=1, attention_resolutions=(7,), num_heads=4, dropout=0.1, norm_groups=8),
        train=dict(data="mnist", steps=3000, batch_size=64, lr=1e-3, ema_decay=0.999, num_sample_images=36),
    ),
    # 32x32 CIFAR-10, a smaller cousin of Ho et al.'s network.
    "cifar10": dict(
        model=dict(image_size=(32, 32), in_channels=3, base_channels=64, channel_mult=(1, 2, 2, 2),
                   num_res_blocks=2, attention_resolutions=(16,), num_heads=4, dropout=0.1),
        train=dict(data="cifar10", steps=100_000, batch_size=128, lr=2e-4, ema_decay=0.9999,
                   warmup_steps=5000, lr_decay="constant"),
    ),
    # Ho et al. (2020) CIFAR-10 exactly: 128 channels, (1,2,2,2), 2 blocks, attention at 16x16,
    # dropout 0.1, additive time conditioning, one head, TensorFlow's 'SAME' padding in the stride-2
    # convolutions: 35,746,307 parameters, computing the function of their released checkpoint
    # (google/ddpm-cifar10-32; ``ddpm convert --from-diffusers``). Trained with batch 128, Adam at 2e-4
    # after 5,000 warm-up steps, gradient clipping at 1, EMA 0.9999, 800k steps, random flips; sampled
    # with sigma^2 = beta (their "fixedlarge").
    "ddpm-cifar10": dict(
        model=dict(image_size=(32, 32), in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2),
                   num_res_blocks=2, attention_resolutions=(16,), num_heads=1, dropout=0.1,
                   resblock_conditioning="additive", downsample_padding="bottom_right"),
        diffusion=dict(variance="beta"),
        train=dict(data="cifar10", steps=800_000, batch_size=128, lr=2e-4, ema_decay=0.9999,
                   warmup_steps=5000, lr_decay="constant", grad_clip=1.0),
    ),
    # Ho et al. (2020) CelebA-HQ and LSUN (church, bedroom, cat) at 256 px: 128 channels, (1,1,2,2,4,4),
    # 2 blocks, attention at 16x16, dropout 0, one head, 'SAME' padding (google/ddpm-celebahq-256,
    # ddpm-church-256, ddpm-bedroom-256, ddpm-cat-256). Batch 64, lr 2e-5, sigma^2 = beta-tilde
    # ("fixedsmall"); on one GPU it needs bf16 (or a smaller batch).
    "ddpm-256": dict(
        model=dict(image_size=(256, 256), in_channels=3, base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4),
                   num_res_blocks=2, attention_resolutions=(16,), num_heads=1, dropout=0.0,
                   resblock_conditioning="additive", downsample_padding="bottom_right"),
        diffusion=dict(variance="beta_tilde"),
        train=dict(steps=500_000, batch_size=64, lr=2e-5, ema_decay=0.9999, warmup_steps=5000,
                   lr_decay="constant", grad_clip=1.0, sample_every=10_000, num_sample_images=16),
    ),
    # Text-to-image on mnist-pairs (32x64 canvases of two MNIST digits, captioned): a small U-Net with
    # transformer blocks that cross-attend to a jointly trained text encoder (Rombach et al. 2022).
    # With --autoencoder the same network runs on the latents, its resolutions divided by the factor.
    "mnist-pairs": dict(
        model=dict(image_size=(32, 64), in_channels=1, base_channels=64, channel_mult=(1, 2, 2),
                   num_res_blocks=1, attention_resolutions=(8,), transformer_resolutions=(16, 8), num_heads=4,
                   dropout=0.0, norm_groups=16, text_encoder="trained", text_width=128, text_layers=2),
        train=dict(data="mnist-pairs", steps=4000, batch_size=64, lr=5e-4, ema_decay=0.999, warmup_steps=200,
                   num_sample_images=32),
    ),
    # 64x64 and up (image folders, CelebA-like sets).
    "64": dict(
        model=dict(image_size=(64, 64), in_channels=3, base_channels=128, channel_mult=(1, 2, 3, 4),
                   num_res_blocks=2, attention_resolutions=(16, 8), num_heads=4, dropout=0.1),
        train=dict(steps=200_000, batch_size=64, lr=1e-4, ema_decay=0.9999, warmup_steps=5000,
                   lr_decay="constant"),
    ),
}

DATA_PRESETS = {"digits": "digits", "mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10",
                "mnist-pairs": "mnist-pairs"}


def preset_for_data(data: str) -> str:
    return DATA_PRESETS.get(data, "64")


def make_config(preset: str) -> RunConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    cfg = RunConfig(model=ModelConfig(**p["model"]), diffusion=DiffusionConfig(**p.get("diffusion", {})),
                    train=TrainConfig(**p["train"]), preset=preset)
    return derive(cfg)
