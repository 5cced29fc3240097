"""Text conditioning (Rombach et al. 2022, LDM §3.3): tokenizers, the trained text encoder, the
SpatialTransformer's cross-attention against a direct computation, padding that changes nothing, the text
U-Net (cross-attention, pooled, a class label as one token), classifier-free guidance with the empty
caption, and a non-text U-Net whose parameters keep their names."""

import copy
import random
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm.config import ModelConfig
from ddpm.diffusion.schedule import make_schedule
from ddpm.errors import UserError
from ddpm.models import text as text_mod
from ddpm.models import unet as unet_mod
from ddpm.models.text import (
    BOS,
    EOS,
    PAD,
    FrozenTextEncoder,
    TextEncoder,
    build_vocabulary,
    detokenize,
    load_frozen_encoder,
    null_tokens,
    real_tokens,
    tokenize,
)
from ddpm.models.transformer import MultiHeadAttention, SpatialTransformer, attention
from ddpm.models.unet import UNet
from ddpm.sampling.denoiser import Denoiser
from ddpm.sampling.guidance import ClassifierFreeGuidance, null_condition

CAPTIONS = ["A red square.", "a blue circle, small", "two green squares", "a red circle!"]


def text_config(**kw) -> ModelConfig:
    values = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8, num_heads=2, dropout=0.0,
                  text_encoder="trained", vocabulary=build_vocabulary(CAPTIONS), max_tokens=8, text_width=16,
                  text_layers=1)
    return ModelConfig(**{**values, **kw})


def randomize_zero_projections(model: nn.Module) -> None:
    """A fresh SpatialTransformer is the identity; a trained one is not: give proj_out weights."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, SpatialTransformer):
            with torch.no_grad():
                m.proj_out.weight.copy_(torch.randn(m.proj_out.weight.shape, generator=gen) * 0.3)


def spatial_transformers(model: nn.Module) -> list[SpatialTransformer]:
    return [m for m in model.modules() if isinstance(m, SpatialTransformer)]


# Tokenizers


def test_words_tokenizer_is_deterministic_and_round_trips():
    shuffled = random.Random(0).sample(CAPTIONS, len(CAPTIONS))
    vocab = build_vocabulary(CAPTIONS)
    assert vocab == build_vocabulary(shuffled) == tuple(sorted(vocab))
    assert "," in vocab and "." in vocab and "red" in vocab and "A" not in vocab  # lower-cased, punctuation kept
    cfg = text_config()
    ids = tokenize(["A red square.", "a blue circle, small"], cfg)
    assert ids.dtype == torch.long and ids.shape == (2, cfg.max_tokens)
    assert torch.equal(ids, tokenize(["A red square.", "a blue circle, small"], cfg))
    assert ids[0].tolist()[:6] == [BOS, *(3 + vocab.index(w) for w in ("a", "red", "square", ".")), EOS]
    assert ids[0, 6:].tolist() == [PAD, PAD]
    assert detokenize(ids, cfg) == ["a red square .", "a blue circle , small"]


def test_unknown_word_is_an_error_naming_it_and_the_caption():
    with pytest.raises(UserError, match=r"'zebra'.*'a red zebra'") as e:
        tokenize(["a red circle", "a red zebra"], text_config())
    assert "\n" not in str(e.value)


def test_too_long_caption_is_an_error_naming_it_and_its_length():
    long = "a red square a red square a red"  # 8 words + BOS + EOS = 10 > 8
    with pytest.raises(UserError, match=r"'a red square a red square a red' is 10 tokens.*max_tokens=8"):
        tokenize([long], text_config())
    assert tokenize(["a red square a red square"], text_config())[0, -1] == EOS  # 8 exactly fits


def test_bytes_tokenizer_needs_no_vocabulary():
    cfg = text_config(tokenizer="bytes", vocabulary=(), max_tokens=12)
    ids = tokenize(["zebra é", ""], cfg)
    assert ids[0].tolist()[:10] == [BOS, *(3 + b for b in "zebra é".encode()), EOS]
    assert detokenize(ids, cfg) == ["zebra é", ""]
    assert text_mod.vocab_size(cfg) == 259


def test_empty_caption_is_the_null_input():
    cfg = text_config()
    null = null_tokens(cfg, 3)
    assert null.shape == (3, cfg.max_tokens)
    assert null[:, :2].tolist() == [[BOS, EOS]] * 3 and (null[:, 2:] == PAD).all()
    assert torch.equal(null, tokenize(["", "", ""], cfg))


def test_text_encoder_gives_a_context_and_the_real_tokens():
    cfg = text_config()
    y = tokenize(["a red square", ""], cfg)
    context, mask = TextEncoder(cfg)(y)
    assert context.shape == (2, cfg.max_tokens, cfg.text_width)
    assert mask.tolist() == [[True] * 5 + [False] * 3, [True] * 2 + [False] * 6]


def test_a_fresh_text_encoder_tells_word_order_apart():
    """Swapping two words must change the context by more than moving its rows: the positions have to carry
    a real share of the input (with N(0, 1) token embeddings and N(0, 0.02^2) positions they carried 1/50)."""
    torch.manual_seed(0)
    cfg = text_config(vocabulary=build_vocabulary(["red then blue"]), text_width=128, text_layers=2, num_heads=4)
    encoder = TextEncoder(cfg)
    a, _ = encoder(tokenize(["red then blue"], cfg))
    b, _ = encoder(tokenize(["blue then red"], cfg))
    moved = b[:, [0, 3, 2, 1, 4]]  # BOS blue then red EOS: rows of "blue" and "red" put back in a's order
    change = (moved - a[:, :5]).norm() / a[:, :5].norm()
    assert change > 0.1, f"the word order changes the context by {change:.3f} of its size"


def test_real_tokens_end_at_the_first_eos_even_when_pad_is_eos():
    eos = 9  # CLIP pads with its end token
    tokens = torch.tensor([[5, 7, 9, 9, 9], [5, 9, 9, 9, 9]])
    assert real_tokens(tokens, eos).tolist() == [[True, True, True, False, False], [True, True, False, False, False]]


# SpatialTransformer


def test_fresh_spatial_transformer_is_the_identity():
    torch.manual_seed(0)
    block = SpatialTransformer(16, 12, num_heads=2, depth=2, groups=8)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(block(x, torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)), x)


def naive_cross_attention(attn: MultiHeadAttention, x, context, mask):
    """The same attention with explicit loops: for each example, head and query, the softmax over the real
    keys only (Vaswani et al. Eq. 1); the padded keys are not even looked at."""
    q, k, v = x @ attn.to_q.weight.T, context @ attn.to_k.weight.T, context @ attn.to_v.weight.T
    n, lq, dim = q.shape
    heads, d = attn.num_heads, dim // attn.num_heads
    out = torch.zeros(n, lq, dim, dtype=torch.float64)
    for b in range(n):
        keys = [j for j in range(context.shape[1]) if mask[b, j]]
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(lq):
                scores = torch.stack([q[b, i, cols] @ k[b, j, cols] / d**0.5 for j in keys])
                w = torch.exp(scores - scores.max())
                w = w / w.sum()
                out[b, i, cols] = sum(w[a] * v[b, j, cols] for a, j in enumerate(keys))
    return out @ attn.to_out.weight.T + attn.to_out.bias


def test_cross_attention_matches_a_naive_computation():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, num_heads=2, context_dim=6).double()
    x, context = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(attn(x, context, mask), naive_cross_attention(attn, x, context, mask))


def test_the_fused_kernel_takes_the_same_boolean_mask():
    """Off the CPU ``attention`` calls scaled_dot_product_attention with attn_mask True = attend: the same
    function as the einsum form with -inf at masked keys (checked here on CPU, where both run)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(attention(q, k, v, mask), fused, atol=1e-6, rtol=1e-5)


def test_masked_context_positions_change_nothing_in_a_spatial_transformer():
    torch.manual_seed(0)
    block = SpatialTransformer(16, 12, num_heads=2, depth=2, groups=8)
    randomize_zero_projections(block)
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 6, 12)
    mask = torch.tensor([[True, True, True, False, False, False], [True, True, True, True, True, False]])
    other = torch.where(mask[..., None], context, 100 * torch.randn(2, 6, 12))
    with torch.no_grad():
        out = block(x, context, mask)
        assert not torch.allclose(out, x)
        torch.testing.assert_close(block(x, other, mask), out, atol=1e-6, rtol=0)
        assert not torch.allclose(block(x, other, torch.ones_like(mask)), out)  # the mask is what hides them


# The text U-Net


@pytest.fixture(scope="module")
def text_unet():
    torch.manual_seed(0)
    model = UNet(text_config())
    randomize_zero_projections(model)
    return model.eval()


def test_text_unet_has_transformers_at_attention_resolutions_and_the_middle(text_unet):
    kinds = [[type(layer).__name__ for layer in layers] for layers in text_unet.down]
    assert kinds == [["ResBlock"], ["Downsample"], ["ResBlock", "SpatialTransformer"]]  # 8x8, then 4x4
    assert [type(layer).__name__ for layer in text_unet.mid] == ["ResBlock", "SpatialTransformer", "ResBlock"]
    assert all(b.layers[0].cross_attn.to_k.in_features == 16 for b in spatial_transformers(text_unet))


def test_text_unet_output_depends_on_the_caption(text_unet):
    cfg = text_unet.config
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    y = tokenize(["a red square", "two green squares"], cfg)
    with torch.no_grad():
        out = text_unet(x, t, y)
        assert out.shape == x.shape
        assert not torch.allclose(out, text_unet(x, t, tokenize(["a blue circle", "a red circle"], cfg)))
        torch.testing.assert_close(text_unet(x, t), text_unet(x, t, null_tokens(cfg, 2)), atol=0, rtol=0)


def test_padding_changes_nothing_in_the_text_unet(text_unet):
    """The PAD embedding and the positions after each caption reach only masked places."""
    cfg = text_unet.config
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    y = tokenize(["a red square", "a blue circle"], cfg)  # 5 real tokens each
    changed = copy.deepcopy(text_unet)
    with torch.no_grad():
        changed.text_encoder.token.weight[PAD] += 5 * torch.randn(cfg.text_width)
        changed.text_encoder.position[5:] += 5 * torch.randn(cfg.max_tokens - 5, cfg.text_width)
        out = text_unet(x, t, y)
        torch.testing.assert_close(changed(x, t, y), out, atol=1e-6, rtol=0)
        changed.text_encoder.position[4] += 1.0  # a real position: it must matter
        assert not torch.allclose(changed(x, t, y), out)


def test_a_text_unet_without_attention_resolutions_still_attends_in_the_middle():
    model = UNet(text_config(attention_resolutions=()))
    assert [type(layer).__name__ for layer in model.mid] == ["ResBlock", "SpatialTransformer", "ResBlock"]
    assert len(spatial_transformers(model)) == 1


def test_gradients_reach_the_text_encoder_and_checkpointing_keeps_them(text_unet):
    model = copy.deepcopy(text_unet).train()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    y = tokenize(["a red square", "two green squares"], model.config)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.checkpointing = checkpointing
        model(x, t, y).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain["text_encoder.token.weight"][y[0, 1]].abs().sum() > 0
    assert plain["text_encoder.layers.0.attn.to_q.weight"].abs().sum() > 0
    assert plain["text_encoder.token.weight"][PAD].abs().sum() == 0  # PAD is masked everywhere
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_pooled_text_adds_the_masked_mean_to_the_time_embedding():
    torch.manual_seed(0)
    model = UNet(text_config(text_injection="pooled")).eval()
    assert not spatial_transformers(model) and isinstance(model.text_proj, nn.Linear)
    assert [type(layer).__name__ for layer in model.mid] == ["ResBlock", "Attention", "ResBlock"]
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    y = tokenize(["a red square", "two green squares"], model.config)
    with torch.no_grad():
        out = model(x, t, y)
        assert not torch.allclose(out, model(x, t, tokenize(["a blue circle", "a red circle"], model.config)))
        changed = copy.deepcopy(model)
        changed.text_encoder.token.weight[PAD] += 5.0
        torch.testing.assert_close(changed(x, t, y), out, atol=1e-6, rtol=0)


def test_a_class_label_as_one_context_token():
    torch.manual_seed(0)
    cfg = text_config(text_encoder="none", vocabulary=(), num_classes=3, transformer_resolutions=(4,))
    model = UNet(cfg).eval()
    blocks = spatial_transformers(model)
    assert len(blocks) == 4  # down, middle, two up blocks at 4x4
    assert blocks[0].layers[0].cross_attn.to_k.in_features == model.label_emb.embedding_dim
    randomize_zero_projections(model)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    seen = []
    hook = blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 2]))
        assert not torch.allclose(out, model(x, t, torch.tensor([1, 2])))
        torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([3, 3])), atol=0, rtol=0)
    hook.remove()
    torch.testing.assert_close(seen[0], model.label_emb(torch.tensor([0, 2]))[:, None])


# Classifier-free guidance


def test_classifier_free_guidance_with_text_is_the_combination_by_hand(text_unet):
    schedule, w, t = make_schedule("linear", 20), 2.5, 11
    y = tokenize(["a red square", "two green squares"], text_unet.config)
    x_t = torch.randn(2, 1, 8, 8)
    guided = ClassifierFreeGuidance(Denoiser(text_unet, schedule, "eps", y=y), w)
    with torch.no_grad():
        pred = guided(x_t, t)
        tt = torch.full((2,), t)
        by_hand = (1 + w) * text_unet(x_t, tt, y) - w * text_unet(x_t, tt, tokenize(["", ""], text_unet.config))
    torch.testing.assert_close(pred.eps, by_hand, atol=1e-5, rtol=1e-5)
    assert torch.equal(null_condition(text_unet, 2, "cpu"), null_tokens(text_unet.config, 2))


def test_null_condition_of_class_and_unconditional_models():
    cfg = text_config(text_encoder="none", vocabulary=(), num_classes=3)
    assert null_condition(UNet(cfg), 2, "cpu").tolist() == [3, 3]
    with pytest.raises(UserError, match="unconditional"):
        null_condition(UNet(text_config(text_encoder="none", vocabulary=())), 2, "cpu")


# Non-text models are unchanged

# The parameters of a small class-conditional U-Net as the code before text conditioning named them:
# module -> its children (each with weight and bias).
RES = ("norm1", "conv1", "emb_proj", "norm2", "conv2")
ATTN = ("norm", "qkv", "proj")
BEFORE = {"time_mlp": ("0", "2"), "label_emb": None, "conv_in": ("",), "down.0.0": RES, "down.1.0": ("conv",),
          "down.2.0": (*RES, "skip"), "down.2.1": ATTN, "mid.0": RES, "mid.1": ATTN, "mid.2": RES,
          "up.0.0": (*RES, "skip"), "up.0.1": ATTN, "up.1.0": (*RES, "skip"), "up.1.1": ATTN, "up.1.2": ("conv",),
          "up.2.0": (*RES, "skip"), "up.3.0": (*RES, "skip"), "norm_out": ("",), "conv_out": ("",)}


def test_a_non_text_unet_keeps_its_parameter_names():
    keys = []
    for module, children in BEFORE.items():
        if children is None:
            keys.append(f"{module}.weight")
            continue
        for child in children:
            keys += [".".join(filter(None, (module, child, leaf))) for leaf in ("weight", "bias")]
    cfg = text_config(text_encoder="none", vocabulary=(), num_classes=3)
    assert list(UNet(cfg).state_dict()) == keys
    torch.manual_seed(0)
    a = UNet(cfg)
    torch.manual_seed(0)
    b = UNet(text_config(text_encoder="none", vocabulary=(), num_classes=3, max_tokens=3, text_width=8))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# Settings and the frozen encoders


@pytest.mark.parametrize("overrides, match", [
    (dict(text_width=15), "text_width=15 is not divisible by num_heads=2"),
    (dict(vocabulary=()), "empty vocabulary"),
    (dict(text_encoder="clip"), "needs the folder of its weights"),
    (dict(num_classes=3), "text .* or on classes"),
    (dict(text_encoder="none", vocabulary=(), transformer_resolutions=(4,)), "needs a context"),
    (dict(transformer_resolutions=(5,)), "5 is not a resolution of the network"),
    (dict(num_heads=3, text_width=15, attention_resolutions=(), transformer_resolutions=(4,)),
     "channels of a transformer block are not divisible by num_heads=3"),
])
def test_settings_the_text_unet_cannot_take_are_one_line_errors(overrides, match):
    with pytest.raises(UserError, match=match) as e:
        UNet(text_config(**overrides))
    assert "\n" not in str(e.value)


def test_frozen_encoder_errors_name_the_folder(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="text encoder folder not found: .*nowhere"):
        load_frozen_encoder(text_config(text_encoder="clip", text_encoder_path=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="no weights .* in text encoder folder"):
        load_frozen_encoder(text_config(text_encoder="t5", text_encoder_path=str(tmp_path)))
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as if not installed
    with pytest.raises(UserError, match="needs the transformers package"):
        load_frozen_encoder(text_config(text_encoder="t5", text_encoder_path=str(tmp_path)))


class FakePretrained(nn.Module):
    """Stands in for a transformers text model: an embedding whose output is the last hidden state."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=12)
        self.embed = nn.Embedding(50, 12)

    def forward(self, input_ids, attention_mask):
        return types.SimpleNamespace(last_hidden_state=self.embed(input_ids) * attention_mask[..., None])


def test_a_frozen_encoder_is_frozen_shared_and_not_saved(monkeypatch, tmp_path):
    monkeypatch.setattr(unet_mod, "load_frozen_encoder", lambda cfg: FrozenTextEncoder(FakePretrained(), eos=2))
    torch.manual_seed(0)
    model = UNet(text_config(text_encoder="clip", text_encoder_path=str(tmp_path)))
    frozen = model._frozen_text.module
    assert not any(k.startswith(("text_encoder", "_frozen")) for k in model.state_dict())
    assert all(not p.requires_grad for p in frozen.parameters())
    assert spatial_transformers(model)[0].layers[0].cross_attn.to_k.in_features == 12
    assert copy.deepcopy(model)._frozen_text.module is frozen  # the EMA copy shares it
    model.train()
    assert not frozen.training
    model.double()
    assert frozen.model.embed.weight.dtype == torch.float64  # .to()/.double() move it with the network
    model.float()
    randomize_zero_projections(model)
    y = torch.tensor([[1, 7, 2, 0], [1, 9, 11, 2]])
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), y)
    out.sum().backward()
    assert all(p.grad is None for p in frozen.parameters())
