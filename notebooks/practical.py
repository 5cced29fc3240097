# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Denoising diffusion, step by step: the practical with `ddpm`
#
# This notebook follows a university practical on Denoising Diffusion Probabilistic Models
# (Ho, Jain & Abbeel 2020) with the building blocks of this library:
#
# 1. the forward process, and $q(x_t \mid x_0)$ in one step;
# 2. linear against cosine schedules (**exercise**: write the cosine schedule);
# 3. the U-Net's pieces;
# 4. a training loop (Algorithm 1) written out;
# 5. sampling by Algorithm 2 written out, checked against the library's sampler;
# 6. a GIF of a denoising trajectory;
# 7. the same with the command line.
#
# It runs offline on a CPU in a few minutes, on scikit-learn's 8x8 digits (built in). Three environment
# variables change it: `DDPM_NOTEBOOK_STEPS`, the training steps (default 1000); `DDPM_NOTEBOOK_T`, the
# number of diffusion steps of the model we train and sample (default 1000, as Ho et al.); and
# `DDPM_NOTEBOOK_OUT`, the folder its files go to (default `out/`). The test suite runs it with 30 and 100.
#
# **Timesteps are 0-based** in the library: index `t` is the paper's step $t+1$, so `betas[0]` is
# $\beta_1$ and `betas[999]` is $\beta_{1000}$.

# %%
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

import ddpm
from ddpm import UNet, make_config, make_schedule, q_sample
from ddpm.data.datasets import load_dataset
from ddpm.models.layers import Attention, ResBlock, timestep_embedding

STEPS = int(os.environ.get("DDPM_NOTEBOOK_STEPS", "1000"))  # training steps (Algorithm 1)
T_MODEL = int(os.environ.get("DDPM_NOTEBOOK_T", "1000"))  # diffusion steps of the model trained in sections 4-7
OUT = Path(os.environ.get("DDPM_NOTEBOOK_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
started = time.perf_counter()
print(f"ddpm {ddpm.__version__}, torch {torch.__version__}, {STEPS} training steps, T = {T_MODEL}, files in {OUT}")


def show(images, titles=None, scale=1.2, suptitle=None):
    """A row of images in [-1, 1], shape (N, 1, H, W)."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(scale * n, scale * 1.25), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i, 0].clamp(-1, 1).cpu(), cmap="gray", vmin=-1, vmax=1)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    plt.show()


# %% [markdown]
# ## The data
#
# `load_dataset("digits")` returns the 1,797 digits as a tensor of shape (N, 1, 8, 8) scaled to $[-1, 1]$,
# the range the forward process assumes (its end, $x_T$, is a standard normal).

# %%
data = load_dataset("digits")
print(data.images.shape, data.images.dtype, data.images.min().item(), data.images.max().item())
show(data.images[:10], titles=[str(int(y)) for y in data.labels[:10]])

# %% [markdown]
# ## 1. The forward process
#
# Each step adds a little Gaussian noise, $q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$,
# with $\beta_t$ rising linearly from $10^{-4}$ to $0.02$ over $T = 1000$ steps. With
# $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$ the steps compose into one
# (Ho et al. Eq. 4):
#
# $$q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),\qquad
#   x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon .$$
#
# `make_schedule` holds every table in float64 under the paper's names; `q_sample` is Eq. 4.

# %%
T = 1000
schedule = make_schedule("linear", T)
print("beta_1 =", schedule.betas[0].item(), " beta_T =", schedule.betas[-1].item())
print("alpha-bar_T =", schedule.alphas_cumprod[-1].item())

x0 = data.images[:1]  # one digit
steps = [0, 5, 10, 50, 100, 999]  # the practical's t = 0, 5, 10, 50, 100, 1000, 0-based: 999 is the last step
noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
strip, titles = [x0[0]], ["data"]
for t in steps:
    strip.append(q_sample(schedule, x0, torch.tensor([t]), noise)[0])
    titles.append(f"t={t}")
show(torch.stack(strip), titles, suptitle="q(x_t | x_0) in one step (one noise draw for every t)")

# %% [markdown]
# One step, or a thousand? Simulating the chain step by step must give the same distribution as Eq. 4.
# We run 20,000 copies of one pixel through 100 steps and compare mean and variance with the closed form.

# %%
x = torch.full((20000,), 0.7, dtype=torch.float64)
g = torch.Generator().manual_seed(1)
for t in range(100):
    x = (1 - schedule.betas[t]).sqrt() * x + schedule.betas[t].sqrt() * torch.randn(x.shape, generator=g,
                                                                                      dtype=torch.float64)
abar = schedule.alphas_cumprod[99]
print(f"chain:  mean {x.mean():.4f}  var {x.var():.4f}")
print(f"Eq. 4:  mean {abar.sqrt() * 0.7:.4f}  var {1 - abar:.4f}")
assert abs(x.mean() - abar.sqrt() * 0.7) < 0.01 and abs(x.var() - (1 - abar)) < 0.01

# %% [markdown]
# ## 2. Linear against cosine schedules
#
# The linear schedule destroys a small image long before $t = T$: $\bar\alpha_t$ falls below 0.5 at
# $t \approx 260$ and below 0.01 at $t \approx 670$, so the last third of the steps sees almost pure noise.
# Nichol & Dhariwal (2021, Eq. 17) define $\bar\alpha_t$ directly, so that it falls more evenly (below 0.5 at
# $t \approx 500$, below 0.01 at $t \approx 935$):
#
# $$\bar\alpha_t = \frac{f(t)}{f(0)},\qquad f(t) = \cos^2\!\left(\frac{t/T + s}{1 + s}\cdot\frac{\pi}{2}\right),
#   \qquad s = 0.008,$$
#
# and $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$, clipped at $0.999$ (near $t = T$ the ratio goes to 0).
#
# **Exercise.** Write `cosine_betas(T)` returning the $T$ betas as a float64 tensor. The cell below holds
# a worked answer; replace its body with your own and rerun the check.

# %%
import math


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # --- worked answer: alpha-bar at t = 0, 1, ..., T (t/T from 0 to 1), then the ratios ---
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


mine = cosine_betas(T)
cosine = make_schedule("cosine", T)
assert mine.shape == cosine.betas.shape
assert torch.allclose(mine, cosine.betas, atol=1e-12), (mine - cosine.betas).abs().max()
assert torch.allclose(torch.cumprod(1 - mine, 0), cosine.alphas_cumprod, atol=1e-12)
print("your cosine schedule matches make_schedule('cosine')")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for sched, name in [(schedule, "linear"), (cosine, "cosine")]:
    axes[0].plot(sched.alphas_cumprod, label=name)
    axes[1].semilogy(sched.betas, label=name)
axes[0].set(title="alpha-bar_t", xlabel="t (0-based)")
axes[1].set(title="beta_t", xlabel="t (0-based)")
axes[0].legend()
plt.tight_layout()
plt.show()

strip, titles = [x0[0]], ["data"]
for t in steps:
    strip.append(q_sample(cosine, x0, torch.tensor([t]), noise)[0])
    titles.append(f"t={t}")
show(torch.stack(strip), titles, suptitle="the same digit and noise under the cosine schedule")

# %% [markdown]
# ## 3. The U-Net's pieces
#
# The network $\epsilon_\theta(x_t, t)$ knows no diffusion math: it maps an image and a timestep to an
# image. The timestep enters as a sinusoidal embedding (as in Transformers; Ho et al. App. B), which an MLP
# turns into a vector every residual block adds to its features.

# %%
emb = timestep_embedding(torch.arange(T), 64)
plt.figure(figsize=(8, 2.5))
plt.imshow(emb.T, aspect="auto", cmap="RdBu")
plt.xlabel("t")
plt.ylabel("embedding dimension")
plt.title("timestep_embedding(t, 64): sines, then cosines, of falling frequency")
plt.colorbar()
plt.show()

# %% [markdown]
# A `ResBlock` is GroupNorm, SiLU, conv, plus the time embedding, GroupNorm, SiLU, dropout, conv, and a skip
# connection; `Attention` is self-attention over all pixels, with a residual connection. Both keep the
# spatial size; the U-Net downsamples and upsamples between them.

# %%
block = ResBlock(in_ch=32, out_ch=64, emb_dim=128, dropout=0.1, groups=8, conditioning="additive")
attn = Attention(channels=64, num_heads=4, groups=8)
h = torch.randn(2, 32, 8, 8)
e = torch.randn(2, 128)
out = attn(block(h, e))
print("ResBlock + Attention:", tuple(h.shape), "->", tuple(out.shape))

cfg = make_config("digits")  # the preset `ddpm train` uses for the digits
model = UNet(cfg.model)
print(cfg.model)
print(f"UNet parameters: {sum(p.numel() for p in model.parameters()):,}")
with torch.no_grad():
    print("UNet(x_t, t):", tuple(model(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 500, 999])).shape))

# %% [markdown]
# ## 4. Training: Algorithm 1
#
# Repeat: take a batch $x_0$, draw $t \sim \mathrm{Uniform}\{1..T\}$ and $\epsilon \sim \mathcal{N}(0, I)$, and
# take a gradient step on $\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon, t)\|^2$
# ($L_\text{simple}$). `train_step(state, x0)` does one such step; a `TrainState` holds what it reads
# and advances: the network, an exponential moving average (EMA) of its weights (the model we will sample
# from), the optimizer, the objective (the loss and how t is drawn) and a random generator.
# We build one by hand (the training loop `ddpm.train` builds the same, plus checkpoints and logs).
#
# The model's schedule is the linear one with `T_MODEL` steps (1000 unless shortened; for other T the
# library rescales the betas by 1000 / T, so $\bar\alpha_T$ stays near 0).

# %%
from ddpm.runtime import make_adamw, resolve, runner
from ddpm.training.ema import make_ema
from ddpm.training.objective import Objective
from ddpm.training.step import TrainState, train_step

cfg.diffusion.timesteps = T_MODEL
model_schedule = make_schedule(cfg.diffusion.schedule, T_MODEL)
cfg.train.steps = STEPS  # the learning-rate schedule (warm-up, cosine decay) spans the run
cfg.train.warmup_steps = min(cfg.train.warmup_steps, STEPS // 5)
torch.manual_seed(0)  # dropout
model = UNet(cfg.model)
options = resolve("cpu")  # "auto" runtime options: bf16 autocast where the CPU has it, as `ddpm train` does
print(options)
state = TrainState(
    network=runner(model, options),  # what computes the loss: the model under the runtime options
    model=model,  # the weights the optimizer updates (float32)
    ema=make_ema(model),
    optimizer=make_adamw(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                         impl=cfg.train.adamw_impl, device="cpu"),
    objective=Objective(cfg.diffusion, model_schedule, "cpu"),  # L_simple, uniform t
    generator=torch.Generator().manual_seed(0),
    config=cfg.train,
)

batch_size = 64
batches = torch.Generator().manual_seed(0)
losses = []
t0 = time.perf_counter()
for step in range(STEPS):
    idx = torch.randint(len(data), (batch_size,), generator=batches)
    loss = train_step(state, data.images[idx])
    losses.append(loss.item())
    if step % max(1, STEPS // 10) == 0 or step == STEPS - 1:
        print(f"step {step:5d}  loss {loss.item():.4f}")
print(f"{STEPS} steps in {time.perf_counter() - t0:.0f} s")

plt.figure(figsize=(6, 2.5))
plt.plot(losses, alpha=0.4)
window = max(1, STEPS // 20)
plt.plot(torch.tensor(losses).unfold(0, window, 1).mean(1) if STEPS >= window else losses)
plt.yscale("log")
plt.xlabel("step")
plt.title("L_simple")
plt.show()

# %% [markdown]
# ## 5. Sampling: Algorithm 2
#
# Start from $x_T \sim \mathcal{N}(0, I)$ and step back with the reverse process: predict the noise, turn it
# into an estimate of $x_0$, take the posterior mean $\tilde\mu_t(x_t, \hat x_0)$ (Ho et al. Eq. 7) and add
# $\sigma_t z$ with $\sigma_t^2 = \beta_t$ (no noise at the last step):
#
# $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},\qquad
#   x_{t-1} = \underbrace{\frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}\hat x_0
#   + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t}_{\tilde\mu_t} + \sigma_t z .$$
#
# This is the paper's $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta\big) + \sigma_t z$
# written through $\hat x_0$, which lets us clip $\hat x_0$ to $[-1, 1]$ as the library does for images
# (`clip_x0`, on by default).

# %%
ema = state.ema.eval()
n, seed = 16, 0


@torch.inference_mode()
def algorithm_2(ema, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)  # x_T
    s = model_schedule
    for t in reversed(range(s.num_timesteps)):  # 0-based: t = T-1 is the paper's step T
        eps = ema(x, torch.full((n,), t, dtype=torch.long))
        x0_hat = (x - s.sqrt_one_minus_alphas_cumprod[t] * eps) / s.sqrt_alphas_cumprod[t]
        x0_hat = x0_hat.clamp(-1, 1)
        mean = s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * x
        if t > 0:
            x = mean + s.betas[t].sqrt() * torch.randn(x.shape, generator=g)
        else:
            x = mean  # z = 0 at the last step
        x = x.float()
    return x


t0 = time.perf_counter()
by_hand = algorithm_2(ema, n, seed)
print(f"Algorithm 2 by hand: {T_MODEL} network calls in {time.perf_counter() - t0:.1f} s")
show(by_hand, suptitle="Algorithm 2, written out")

# %% [markdown]
# The library's sampler is the same algorithm: a `Denoiser` turns the network's output into
# $(\hat\epsilon, \hat x_0)$ and `sample_ancestral` runs the steps. With the same seed, the generator
# draws $x_T$ and every $z$ in the same order, so the two agree up to floating-point round-off.
#
# Every sampler yields one `Step` per network call (the $x_t$ it saw and its prediction of $x_0$), and a
# `callback` sees each one. We pass a `TrajectoryRecorder`, which keeps snapshots for a picture and frames
# for a GIF (section 6).

# %%
from ddpm import Denoiser, sample_ancestral
from ddpm.sampling.grids import timestep_grid
from ddpm.viz.process import TrajectoryRecorder, nearest_on_grid

grid = timestep_grid(T_MODEL)  # T-1, T-2, ..., 0: the full grid of Algorithm 2
snapshots = nearest_on_grid([T_MODEL - 1, 3 * T_MODEL // 4, T_MODEL // 2, T_MODEL // 4, T_MODEL // 10, 0], grid)
recorder = TrajectoryRecorder(steps=snapshots, grid=grid, k=6, max_frames=60)

g = torch.Generator().manual_seed(seed)
x_T = torch.randn(n, 1, 8, 8, generator=g)
denoise = Denoiser(ema, model_schedule, prediction=cfg.diffusion.prediction, clip_x0=cfg.diffusion.clip_x0)
library = sample_ancestral(denoise, x_T, model_schedule, variance="beta", generator=g, callback=recorder,
                           progress=False)
diff = (library - by_hand).abs().max().item()
print(f"largest difference, by hand vs sample_ancestral: {diff:.2e}")
assert diff < 1e-3
show(library, suptitle="sample_ancestral, same seed")

# %% [markdown]
# ## 6. A trajectory, as a GIF
#
# The recorder kept the first six samples of the run above. In the picture, each sample has two rows: $x_t$
# at a few steps, and the model's guess of $x_0$ at those steps; in the GIF the top row is $x_t$ and the
# bottom row the guess, at every few steps. The guess settles long before the noise is gone.

# %%
png, gif = recorder.save(library, OUT / "trajectory.png", OUT / "trajectory.gif")
display(Image(filename=str(png)))
display(Image(filename=str(gif)))

# %% [markdown]
# ## 7. The same with the command line
#
# Everything above is what `ddpm train` and `ddpm sample` do, with checkpoints, logs, an EMA, resuming and
# faster samplers around it. In a notebook: `!ddpm train --steps 1000 --out runs/digits`, then
# `!ddpm sample --checkpoint runs/digits --n 16`. Here we call the same command through the kernel's own
# Python, so it works in any environment.

# %%
def ddpm_cli(*args):
    cmd = [sys.executable, "-m", "ddpm", *map(str, args)]
    print("$ ddpm", " ".join(map(str, args)))
    result = subprocess.run(cmd, capture_output=True, text=True)
    print(result.stdout[-2000:], result.stderr[-2000:], sep="")
    assert result.returncode == 0, result.returncode


run_dir = OUT / "cli_run"
t0 = time.perf_counter()
ddpm_cli("train", "--steps", STEPS, "--timesteps", T_MODEL, "--sample-every", 0, "--out", run_dir, "-q")
print(f"trained in {time.perf_counter() - t0:.0f} s; the run folder holds:",
      sorted(p.name for p in run_dir.iterdir()))
ddpm_cli("sample", "--checkpoint", run_dir, "--n", 16, "--seed", 0, "--out", OUT / "cli_samples", "-q")
display(Image(filename=str(OUT / "cli_samples" / "grid.png")))

# %% [markdown]
# The run can be loaded back in Python too, with its config, schedule and EMA model, and sampled with any
# sampler; here DPM-Solver++(2M) with 20 network calls instead of 1,000.

# %%
from ddpm import SamplingOptions, load_run

run = load_run(run_dir)
fast = run.sample(16, sampling=SamplingOptions("dpm++2m", steps=20), generator=torch.Generator().manual_seed(0),
                  progress=False)
show(fast, suptitle="load_run(...).sample with DPM-Solver++(2M), 20 calls")
print(f"the whole notebook took {time.perf_counter() - started:.0f} s")
