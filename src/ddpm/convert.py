"""Checkpoints in and out of diffusers' format: a ``UNet2DModel`` + ``DDPMScheduler`` folder <-> a run folder.

Ho et al.'s released models (google/ddpm-cifar10-32, ddpm-celebahq-256, ddpm-church-256,
ddpm-bedroom-256, ddpm-cat-256 and their -ema variants) are published in diffusers' format. Their
network is ours with additive time conditioning, one attention head, GroupNorm epsilon 1e-6, [sin | cos]
time features with frequencies 10000^(-i / (half - 1)) (diffusers' ``flip_sin_to_cos=False,
freq_shift=1``) and TensorFlow's bottom-right padding in the stride-2 convolutions
(``downsample_padding=0``, our ``downsample_padding="bottom_right"``); the up path concatenates the
skip after the running features and ends each level with nearest upsampling and a 3x3 convolution, as
ours does. So the conversion only renames tensors and stacks attention's q, k, v into one 1x1
convolution; a configuration that cannot be expressed on the other side is a one-line error naming the
field.

Folders: either layout diffusers writes, ``DIR/unet/config.json`` + ``DIR/scheduler/scheduler_config.json``
(a pipeline) or ``DIR/config.json`` + ``DIR/scheduler_config.json`` (the early google/ddpm-* repos).
Weights from ``diffusion_pytorch_model.safetensors``, or from ``diffusion_pytorch_model.bin`` through
``torch.load(weights_only=True)``, which refuses to unpickle code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ddpm.checkpoint import CHECKPOINT, EMA, load_ema, save_ema
from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, derive
from ddpm.diffusion.schedule import cosine_betas, linear_betas
from ddpm.errors import UserError
from ddpm.io import atomic_write, read_safetensors, write_text_atomic
from ddpm.models.layers import NORM_EPS
from ddpm.models.unet import UNet, check_model_config

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# diffusers' attention tensors before its 0.15 rename (the google/ddpm-* files carry these).
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# diffusers' "learned" output is the variance itself, ours the log-variance: only learned_range maps.
VARIANCE_TYPES = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta",
                  "fixed_large_log": "beta", "learned_range": "learned_range"}
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# UNet2DModel settings with one value ours can express, and that value.
FIXED_UNET = {"center_input_sample": False, "time_embedding_type": "positional", "flip_sin_to_cos": False,
              "freq_shift": 1, "act_fn": "silu", "mid_block_scale_factor": 1, "norm_eps": NORM_EPS,
              "mid_block_type": "UNetMidBlock2D", "downsample_type": "conv", "upsample_type": "conv",
              "add_attention": True, "class_embed_type": None, "time_embedding_dim": None}
# What diffusers' UNet2DModel.__init__ uses for a key a config leaves out (tests/test_convert.py checks these
# against the installed diffusers), so a config means here what it means there.
UNET_DEFAULTS = {"sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
                 "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
                 "flip_sin_to_cos": True, "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                                               "AttnDownBlock2D"),
                 "mid_block_type": "UNetMidBlock2D", "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D",
                                                                        "AttnUpBlock2D", "UpBlock2D"),
                 "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
                 "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
                 "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
                 "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True,
                 "class_embed_type": None, "num_class_embeds": None}
# Our class-conditional models have one more class embedding, the "no label" one; an export says so.
NULL_LABEL_KEY = "_ddpm_last_class_is_no_label"


# --- configs ----------------------------------------------------------------------------------------


def model_config_from_diffusers(d: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for a ``UNet2DModel`` config; a setting ours cannot express is a UserError naming it."""
    d = {**UNET_DEFAULTS, **{k: v for k, v in d.items() if k in UNET_DEFAULTS or k == NULL_LABEL_KEY}}
    try:
        return _model_config(d)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"cannot read the UNet2DModel config: {e}") from None


def _model_config(d: dict[str, Any]) -> ModelConfig:
    if d["act_fn"] == "swish":  # diffusers' other name for SiLU
        d["act_fn"] = "silu"
    for key, want in FIXED_UNET.items():
        have = d[key]
        if have != want and not (isinstance(want, float) and isinstance(have, float) and abs(have - want) < 1e-12):
            raise UserError(f"UNet2DModel setting {key}={have!r} has no equivalent here (only {want!r})")
    chans = list(d["block_out_channels"])
    base = chans[0]
    if any(c % base for c in chans):
        raise UserError(f"UNet2DModel setting block_out_channels={chans}: each must be a multiple of the first")
    down, up = list(d["down_block_types"]), list(d["up_block_types"])
    for field, kinds in (("down_block_types", down), ("up_block_types", up)):
        for kind in kinds:
            if kind not in ("DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"):
                raise UserError(f"UNet2DModel setting {field}: block type {kind!r} has no equivalent here")
    if [k.startswith("Attn") for k in up] != [k.startswith("Attn") for k in reversed(down)]:
        raise UserError(f"UNet2DModel setting up_block_types={up} does not mirror down_block_types={down}")
    size = d["sample_size"]
    if not (isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 2)):
        raise UserError(f"UNet2DModel setting sample_size={size!r}: give the image size (an int or height, width)")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    attn_levels = [i for i, k in enumerate(down) if k.startswith("Attn")]
    head_dim = d["attention_head_dim"]
    attending = [chans[i] for i in attn_levels] + [chans[-1]]  # the middle block attends too
    if head_dim is not None and any(c % head_dim for c in attending):
        raise UserError(f"UNet2DModel setting attention_head_dim={head_dim} does not divide the attention "
                        f"levels' channels {attending}")
    heads = {1} if head_dim is None else {c // head_dim for c in attending}
    if len(heads) != 1:
        raise UserError(f"UNet2DModel setting attention_head_dim={head_dim} gives levels different head counts "
                        f"({sorted(heads)}); ours has one num_heads")
    conditioning = {"default": "additive", "scale_shift": "scale_shift"}.get(d["resnet_time_scale_shift"])
    if conditioning is None:
        raise UserError(f"UNet2DModel setting resnet_time_scale_shift={d['resnet_time_scale_shift']!r} has no "
                        "equivalent here (only default or scale_shift)")
    # diffusers' middle attention has a GroupNorm only with default conditioning or attn_norm_num_groups set.
    attn_groups = d["attn_norm_num_groups"]
    if attn_groups not in (None, d["norm_num_groups"]) or (attn_groups is None and conditioning != "additive"):
        raise UserError(f"UNet2DModel setting attn_norm_num_groups={attn_groups!r} has no equivalent here (ours "
                        "normalises the middle attention with norm_num_groups)")
    padding = {0: "bottom_right", 1: "symmetric"}.get(d["downsample_padding"])
    if padding is None:
        raise UserError(f"UNet2DModel setting downsample_padding={d['downsample_padding']} has no equivalent here")
    classes = d["num_class_embeds"]
    if classes is not None and not (d.get(NULL_LABEL_KEY) and classes >= 3):
        raise UserError(f"UNet2DModel setting num_class_embeds={classes}: ours needs a 'no label' embedding beside "
                        "the classes (for classifier-free guidance), which this model was not trained with")
    cfg = ModelConfig(image_size=(h, w), in_channels=d["in_channels"], out_channels=d["out_channels"],
                      base_channels=base, channel_mult=tuple(c // base for c in chans),
                      num_res_blocks=d["layers_per_block"],
                      attention_resolutions=tuple(h // 2**i for i in attn_levels), num_heads=heads.pop(),
                      dropout=d["dropout"], resblock_conditioning=conditioning, norm_groups=d["norm_num_groups"],
                      downsample_padding=padding, num_classes=classes - 1 if classes else None)
    check_model_config(cfg)
    return cfg


def model_config_to_diffusers(cfg: ModelConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` config of our ModelConfig; what diffusers cannot build is a UserError naming it."""
    h = cfg.image_size[0]
    attn = [h // 2**i in cfg.attention_resolutions for i in range(len(cfg.channel_mult))]
    chans = [cfg.base_channels * m for m in cfg.channel_mult]
    # diffusers normalises every width (and the up path's concatenations) with norm_groups groups; ours with
    # min(norm_groups, width), so narrow levels may have fewer.
    widths = {cfg.base_channels, *chans, *(a + b for a in chans for b in chans)}
    if any(c % cfg.norm_groups for c in widths):
        raise UserError(f"norm_groups={cfg.norm_groups} does not divide every width of this network "
                        f"({sorted(c for c in widths if c % cfg.norm_groups)[0]}), as diffusers needs")
    attending = [c for c, a in zip(chans, attn) if a] + [chans[-1]]  # the middle block attends too
    widths = {c // cfg.num_heads for c in attending}
    if cfg.num_heads > 1 and len(widths) > 1:
        raise UserError(f"num_heads={cfg.num_heads} gives the attention levels different head widths, which "
                        "diffusers' single attention_head_dim cannot express")
    head_dim = None if cfg.num_heads == 1 else widths.pop()
    return {"_class_name": "UNet2DModel", "sample_size": list(cfg.image_size) if cfg.image_size[0] != cfg.image_size[1]
            else h, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": chans, "layers_per_block": cfg.num_res_blocks,
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
            "attention_head_dim": head_dim, "norm_num_groups": cfg.norm_groups, "dropout": cfg.dropout,
            "downsample_padding": 0 if cfg.downsample_padding == "bottom_right" else 1,
            "resnet_time_scale_shift": "default" if cfg.resblock_conditioning == "additive" else "scale_shift",
            "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,
            **({NULL_LABEL_KEY: True} if cfg.num_classes else {}),
            "attn_norm_num_groups": cfg.norm_groups,
            **{k: v for k, v in FIXED_UNET.items() if v is not None}}


def diffusion_config_from_diffusers(s: dict[str, Any]) -> DiffusionConfig:
    """Our DiffusionConfig for a ``DDPMScheduler`` config; the betas must be one of our schedules."""
    try:
        return _diffusion_config(s)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read the DDPMScheduler config: {str(e).splitlines()[0]}") from None


def _diffusion_config(s: dict[str, Any]) -> DiffusionConfig:
    if s.get("_class_name", "DDPMScheduler") not in ("DDPMScheduler", "DDIMScheduler"):
        raise UserError(f"the scheduler is a {s['_class_name']}, not DDPM's (DDPMScheduler)")
    if s.get("rescale_betas_zero_snr"):
        raise UserError("DDPMScheduler setting rescale_betas_zero_snr=True has no equivalent here")
    T = s.get("num_train_timesteps", 1000)
    kind = s.get("beta_schedule", "linear")
    if s.get("trained_betas") is not None:
        betas = torch.tensor(s["trained_betas"], dtype=torch.float64)
    elif kind == "linear":
        betas = torch.linspace(s.get("beta_start", 1e-4), s.get("beta_end", 0.02), T, dtype=torch.float64)
    elif kind == "squaredcos_cap_v2":
        betas = cosine_betas(T)
    else:
        raise UserError(f"DDPMScheduler setting beta_schedule={kind!r} has no equivalent here")
    schedule = next((name for name, ours in (("linear", linear_betas(T)), ("cosine", cosine_betas(T)))
                     if len(betas) == T and torch.allclose(betas, ours, rtol=1e-6, atol=1e-9)), None)
    if schedule is None:
        given = "trained_betas" if s.get("trained_betas") is not None else kind
        raise UserError(f"the scheduler's betas ({given}, T={T}) match neither the linear nor the cosine schedule "
                        "of ddpm (linear: 1e-4 to 0.02 scaled by 1000 / T)")
    for key, table in (("variance_type", VARIANCE_TYPES), ("prediction_type", PREDICTION_TYPES)):
        if s.get(key, next(iter(table))) not in table:
            raise UserError(f"DDPMScheduler setting {key}={s[key]!r} has no equivalent here"
                            + (" (diffusers' learned variance is not a log-variance; learned_range maps)"
                               if s[key] == "learned" else ""))
    if s.get("thresholding") or (s.get("clip_sample", True) and s.get("clip_sample_range", 1.0) != 1.0):
        raise UserError("DDPMScheduler settings thresholding / clip_sample_range other than 1 have no equivalent here")
    return DiffusionConfig(schedule=schedule, timesteps=T, prediction=PREDICTION_TYPES[s.get("prediction_type",
                           "epsilon")], variance=VARIANCE_TYPES[s.get("variance_type", "fixed_small")],
                           clip_x0=bool(s.get("clip_sample", True)))


def diffusion_config_to_diffusers(cfg: DiffusionConfig) -> dict[str, Any]:
    """The ``DDPMScheduler`` config of ours; ``trained_betas`` carries our betas exactly."""
    if cfg.variance == "learned":
        raise UserError("variance=learned (a log-variance) has no diffusers equivalent; learned_range has")
    betas = (linear_betas if cfg.schedule == "linear" else cosine_betas)(cfg.timesteps)
    scale = 1000.0 / cfg.timesteps
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": cfg.timesteps,
            "beta_schedule": "linear" if cfg.schedule == "linear" else "squaredcos_cap_v2",
            "beta_start": 1e-4 * scale, "beta_end": 0.02 * scale, "trained_betas": betas.tolist(),
            "variance_type": {v: k for k, v in VARIANCE_TYPES.items() if not k.endswith("_log")}[cfg.variance],
            "prediction_type": {v: k for k, v in PREDICTION_TYPES.items()}[cfg.prediction],
            "clip_sample": cfg.clip_x0, "clip_sample_range": 1.0}


# --- weights ----------------------------------------------------------------------------------------


def _module_pairs(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(our prefix, diffusers' prefix, kind) for every module with weights, walking both U-Nets in step."""
    pairs = [("time_mlp.0", "time_embedding.linear_1", "plain"), ("time_mlp.2", "time_embedding.linear_2", "plain"),
             ("conv_in", "conv_in", "plain"), ("norm_out", "conv_norm_out", "plain"), ("conv_out", "conv_out", "plain")]
    if cfg.num_classes:
        pairs.append(("label_emb", "class_embedding", "plain"))
    h, levels, n = cfg.image_size[0], len(cfg.channel_mult), cfg.num_res_blocks
    i = 0
    for level in range(levels):
        attn = h // 2**level in cfg.attention_resolutions
        for b in range(n):
            pairs.append((f"down.{i}.0", f"down_blocks.{level}.resnets.{b}", "resblock"))
            if attn:
                pairs.append((f"down.{i}.1", f"down_blocks.{level}.attentions.{b}", "attention"))
            i += 1
        if level < levels - 1:
            pairs.append((f"down.{i}.0", f"down_blocks.{level}.downsamplers.0", "resample"))
            i += 1
    pairs += [("mid.0", "mid_block.resnets.0", "resblock"), ("mid.1", "mid_block.attentions.0", "attention"),
              ("mid.2", "mid_block.resnets.1", "resblock")]
    i = 0
    for j, level in enumerate(reversed(range(levels))):
        attn = h // 2**level in cfg.attention_resolutions
        for b in range(n + 1):
            pairs.append((f"up.{i}.0", f"up_blocks.{j}.resnets.{b}", "resblock"))
            if attn:
                pairs.append((f"up.{i}.1", f"up_blocks.{j}.attentions.{b}", "attention"))
            if level and b == n:
                pairs.append((f"up.{i}.{2 if attn else 1}", f"up_blocks.{j}.upsamplers.0", "resample"))
            i += 1
    return pairs


RESBLOCK = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
            "skip": "conv_shortcut"}


def _tensor_names(ours: str, theirs: str, kind: str) -> list[tuple[str, str]]:
    """(our name, their name) of the plain tensors (weight, bias) under a module pair."""
    if kind == "plain":
        subs = [("", "")]
    elif kind == "resample":
        subs = [(".conv", ".conv")]
    elif kind == "resblock":
        subs = [(f".{a}", f".{b}") for a, b in RESBLOCK.items()]
    else:  # attention: only the norm maps one to one; q, k, v and the output are handled by the caller
        subs = [(".norm", ".group_norm")]
    return [(f"{ours}{a}.{p}", f"{theirs}{b}.{p}") for a, b in subs for p in ("weight", "bias")]


def state_from_diffusers(theirs: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our U-Net's state dict from a ``UNet2DModel`` one (either attention naming)."""
    theirs = {_new_attention_name(k): v for k, v in theirs.items()}
    used, ours = set(), {}
    for a, b, kind in _module_pairs(cfg):
        for mine, their in _tensor_names(a, b, kind):
            if their in theirs:
                ours[mine] = theirs[their]
                used.add(their)
        if kind == "attention":
            for p in ("weight", "bias"):
                q, k, v, o = (f"{b}.{n}.{p}" for n in ("to_q", "to_k", "to_v", "to_out.0"))
                if all(x in theirs for x in (q, k, v, o)):
                    stacked = torch.cat([theirs[q], theirs[k], theirs[v]])
                    ours[f"{a}.qkv.{p}"] = stacked[..., None, None] if p == "weight" else stacked
                    ours[f"{a}.proj.{p}"] = theirs[o][..., None, None] if p == "weight" else theirs[o]
                    used.update((q, k, v, o))
    _check_complete(ours, cfg, set(theirs) - used)
    return ours


def state_to_diffusers(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict from ours."""
    theirs = {}
    for a, b, kind in _module_pairs(cfg):
        for mine, their in _tensor_names(a, b, kind):
            if mine in ours:
                theirs[their] = ours[mine]
        if kind == "attention":
            for p in ("weight", "bias"):
                qkv = ours[f"{a}.qkv.{p}"].flatten(1) if p == "weight" else ours[f"{a}.qkv.{p}"]
                for name, part in zip(("to_q", "to_k", "to_v"), qkv.chunk(3)):
                    theirs[f"{b}.{name}.{p}"] = part
                proj = ours[f"{a}.proj.{p}"]
                theirs[f"{b}.to_out.0.{p}"] = proj.flatten(1) if p == "weight" else proj
    return {k: v.contiguous() for k, v in theirs.items()}


def _new_attention_name(key: str) -> str:
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] in OLD_ATTENTION_NAMES and "attentions" in parts:
        return ".".join([*parts[:-2], OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    return key


def _check_complete(ours: dict[str, torch.Tensor], cfg: ModelConfig, unused: set[str]) -> None:
    want = {k: v.shape for k, v in UNet(cfg).state_dict().items()}
    missing = sorted(set(want) - set(ours))
    wrong = sorted(k for k in set(want) & set(ours) if tuple(ours[k].shape) != tuple(want[k]))
    if missing or unused or wrong:
        first = (f"no tensor for {missing[0]}" if missing else f"tensor {sorted(unused)[0]} is not used" if unused
                 else f"{wrong[0]} has shape {tuple(ours[wrong[0]].shape)}, the config wants {tuple(want[wrong[0]])}")
        raise UserError(f"the weights do not match their UNet2DModel config: {first} "
                        f"({len(missing)} missing, {len(unused)} unused, {len(wrong)} misshapen)")


# --- folders ----------------------------------------------------------------------------------------


def _find(root: Path, sub: str, names: tuple[str, ...]) -> Path:
    for folder in (root / sub, root):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"no {' or '.join(names)} in {root} or {root / sub}; is it a diffusers DDPM folder?")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"cannot parse {path}: {e}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path, "weights")[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # a refused pickle is an UnpicklingError, a broken file an EOFError or RuntimeError
        raise UserError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def import_diffusers(src: str | Path, out: str | Path) -> Path:
    """Write the run folder ``out`` (config.json, ema.safetensors) of the diffusers DDPM folder ``src``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"diffusers folder not found: {src}")
    if (out / EMA).exists() or (out / CHECKPOINT).exists():
        raise UserError(f"{out} already holds a run; choose another --out")
    unet = _read_json(_find(src, "unet", ("config.json",)))
    if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"{src} holds a {unet['_class_name']}, not a UNet2DModel")
    cfg = RunConfig(model=model_config_from_diffusers(unet),
                    diffusion=diffusion_config_from_diffusers(_read_json(_find(src, "scheduler",
                                                                                ("scheduler_config.json",)))),
                    preset="converted")
    learned = cfg.diffusion.variance in ("learned", "learned_range")
    if cfg.model.out_channels != cfg.model.in_channels * (2 if learned else 1):
        raise UserError(f"out_channels={cfg.model.out_channels} does not fit variance_type for "
                        f"{cfg.model.in_channels} input channels")
    derive(cfg)
    cfg.train.data = ""  # unknown: ``ddpm evaluate`` then needs --reference
    state = state_from_diffusers(_read_weights(_find(src, "unet", WEIGHTS)), cfg.model)
    save_ema(out, cfg, 0, state)
    return out


def export_diffusers(run: str | Path, out: str | Path) -> Path:
    """Write the diffusers DDPMPipeline folder ``out`` (unet/, scheduler/, model_index.json) of a run."""
    cfg, state, _ = load_ema(run)
    unet, scheduler = model_config_to_diffusers(cfg.model), diffusion_config_to_diffusers(cfg.diffusion)
    out = Path(out)
    theirs = state_to_diffusers(state, cfg.model)
    atomic_write(out / "unet" / WEIGHTS[0], lambda tmp: save_file(theirs, tmp))
    write_text_atomic(out / "unet" / "config.json", json.dumps(unet, indent=2) + "\n")
    write_text_atomic(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler, indent=2) + "\n")
    index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    write_text_atomic(out / "model_index.json", json.dumps(index, indent=2) + "\n")
    return out
