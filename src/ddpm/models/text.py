"""Text conditioning: tokenizers and text encoders (Rombach et al. 2022, LDM §3.3). No diffusion here.

A caption becomes ``max_tokens`` ids: BOS, its tokens, EOS, then PAD. Two tokenizers need no download:

    words   lower-cased words and punctuation marks; the vocabulary is built from the training captions
            (``build_vocabulary``) and saved in ``ModelConfig.vocabulary``, so a run samples without them
    bytes   the caption's UTF-8 bytes, no vocabulary

A frozen CLIP or T5 encoder (``text_encoder="clip"|"t5"``) brings its own tokenizer, read with it from
``text_encoder_path``. The empty caption "" is "no text", the unconditional input of classifier-free
guidance (``null_tokens``). An encoder maps (N, L) ids to a context (N, L, width) and a mask (N, L), True
at real tokens; PAD positions are masked everywhere downstream, so they change nothing.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from torch import nn

from ddpm.config import ModelConfig
from ddpm.errors import UserError
from ddpm.models.transformer import GEGLU, MultiHeadAttention

PAD, BOS, EOS = 0, 1, 2
SPECIALS = 3  # ids below this are PAD, BOS, EOS; a words or bytes token i has id SPECIALS + i
WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits, or one punctuation mark
FROZEN = ("clip", "t5")
WEIGHTS = ("*.safetensors", "*.bin")  # transformers' weight files (single or sharded)


def words(caption: str) -> list[str]:
    """The words tokenizer's pieces of ``caption``: lower-cased words and punctuation marks."""
    return WORD.findall(caption.lower())


def build_vocabulary(captions) -> tuple[str, ...]:
    """The sorted distinct words of the training ``captions``: the same captions give the same ids."""
    return tuple(sorted({w for c in captions for w in words(c)}))


def vocab_size(cfg: ModelConfig) -> int:
    """Number of token ids of the trained encoder's embedding: the specials, then words or bytes."""
    return SPECIALS + (256 if cfg.tokenizer == "bytes" else len(cfg.vocabulary))


@functools.lru_cache(maxsize=8)
def _word_ids(vocabulary: tuple[str, ...]) -> dict[str, int]:
    return {w: SPECIALS + i for i, w in enumerate(vocabulary)}


def _ids(caption: str, cfg: ModelConfig) -> list[int]:
    """BOS, the caption's tokens, EOS; an unknown word is an error, never dropped."""
    if cfg.tokenizer == "bytes":
        return [BOS, *(SPECIALS + b for b in caption.encode("utf-8")), EOS]
    table = _word_ids(tuple(cfg.vocabulary))
    ids = [BOS]
    for w in words(caption):
        if w not in table:
            raise UserError(f"word {w!r} of caption {caption!r} is not in the model's vocabulary "
                            f"({len(cfg.vocabulary)} words of the training captions)")
        ids.append(table[w])
    return ids + [EOS]


def tokenize(texts: list[str], cfg: ModelConfig) -> torch.Tensor:
    """(N, max_tokens) int64 ids of ``texts``: BOS, tokens, EOS, PAD... (or a frozen encoder's own
    tokenizer's ids, padded likewise). A caption longer than ``max_tokens`` is an error naming it."""
    if isinstance(texts, str):
        raise TypeError("tokenize takes a list of captions, not one string")
    if cfg.text_encoder in FROZEN:
        tok = _pretrained_tokenizer(cfg.text_encoder_path)
        rows, pad = [list(r) for r in tok(list(texts))["input_ids"]], tok.pad_token_id
        pad = tok.eos_token_id if pad is None else pad  # masked anyway: the mask ends at the first EOS
    else:
        rows, pad = [_ids(t, cfg) for t in texts], PAD
    out = torch.full((len(rows), cfg.max_tokens), pad, dtype=torch.long)
    for i, (text, ids) in enumerate(zip(texts, rows)):
        if len(ids) > cfg.max_tokens:
            raise UserError(f"caption {text!r} is {len(ids)} tokens long (start and end included), more than "
                            f"max_tokens={cfg.max_tokens}; shorten it or train with a larger --max-tokens")
        out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def detokenize(tokens: torch.Tensor, cfg: ModelConfig) -> list[str]:
    """The words or bytes tokenizer's captions back from (N, L) ids (words joined by spaces)."""
    out = []
    for row in tokens.tolist():
        body = [i - SPECIALS for i in row if i >= SPECIALS]
        out.append(bytes(body).decode("utf-8", errors="replace") if cfg.tokenizer == "bytes"
                   else " ".join(cfg.vocabulary[i] for i in body))
    return out


def null_tokens(cfg: ModelConfig, n: int) -> torch.Tensor:
    """(n, max_tokens) ids of the empty caption (BOS EOS PAD...): "no text" for classifier-free guidance
    (Ho & Salimans 2022), and what a dropped caption becomes in training."""
    return tokenize([""] * n, cfg)


def real_tokens(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """(N, L) bool: True up to and including each row's first ``eos``, False after (the padding). Works for
    tokenizers whose PAD is their EOS (CLIP's)."""
    seen = torch.cumsum((tokens == eos).long(), dim=1)
    return (seen == 0) | ((seen == 1) & (tokens == eos))


class TextEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer: masked self-attention, then a GEGLU feed-forward."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.ff = GEGLU(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.ff(self.norm2(x))


class TextEncoder(nn.Module):
    """The text encoder trained with the U-Net (LDM §3.3's tau_theta, a small transformer; App. E.2):
    token embedding + learned positions, ``text_layers`` pre-LN layers whose attention skips PAD keys, and a
    final LayerNorm. ``forward(tokens) -> (context (N, L, text_width), mask (N, L), True = real token)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.width = cfg.text_width
        # CLIP's initialisation (Radford et al. 2021): tokens N(0, 0.02^2), positions N(0, 0.01^2). With
        # nn.Embedding's N(0, 1) the positions were 1/50 of a token and the word order barely reached the
        # layers: a model then drew the two digits named but on either side.
        self.token = nn.Embedding(vocab_size(cfg), cfg.text_width)
        nn.init.normal_(self.token.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(cfg.max_tokens, cfg.text_width) * 0.01)
        self.layers = nn.ModuleList(TextEncoderLayer(cfg.text_width, cfg.num_heads) for _ in range(cfg.text_layers))
        self.norm = nn.LayerNorm(cfg.text_width)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.ndim != 2 or tokens.shape[1] > self.position.shape[0]:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)}; expected (N, L <= {self.position.shape[0]})")
        mask = tokens != PAD
        h = self.token(tokens) + self.position[: tokens.shape[1]]
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h), mask


class FrozenTextEncoder(nn.Module):
    """A pretrained CLIP or T5 text encoder (``transformers``), frozen: its last hidden states are the
    context, as LDM's FrozenCLIPEmbedder and Imagen's frozen T5 (Saharia et al. 2022)."""

    def __init__(self, model: nn.Module, eos: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.eos = eos
        self.width = model.config.hidden_size
        self.eval()

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        return super().train(False)  # frozen: never dropout, whatever the U-Net's mode

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = real_tokens(tokens, self.eos)
        return self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state, mask


def _check_folder(name: str, folder: str | None) -> Path:
    if not folder:
        raise UserError(f"text_encoder {name!r} needs the folder of its weights (--text-encoder-path)")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"text encoder folder not found: {path} (--text-encoder-path)")
    return path


def _transformers(what: str):
    try:
        import transformers
    except ImportError:
        raise UserError(f"{what} needs the transformers package (pip install transformers)") from None
    return transformers


@functools.lru_cache(maxsize=4)
def _pretrained_tokenizer(path: str):
    folder = _check_folder("clip or t5", path)
    transformers = _transformers("a CLIP or T5 text encoder")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a tokenizer from {folder}: {str(e).splitlines()[0]}") from None


def load_frozen_encoder(cfg: ModelConfig) -> FrozenTextEncoder:
    """The frozen ``cfg.text_encoder`` ("clip" or "t5") from ``text_encoder_path``, never downloaded; a
    one-line error when the folder, its weights or the ``transformers`` package are missing."""
    folder = _check_folder(cfg.text_encoder, cfg.text_encoder_path)
    if not any(any(folder.glob(p)) for p in WEIGHTS):
        raise UserError(f"no weights (*.safetensors or *.bin) in text encoder folder {folder}")
    transformers = _transformers(f"text_encoder {cfg.text_encoder!r}")
    cls = transformers.CLIPTextModel if cfg.text_encoder == "clip" else transformers.T5EncoderModel
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a {cfg.text_encoder} text encoder from {folder}: "
                        f"{str(e).splitlines()[0]}") from None
    return FrozenTextEncoder(model, _pretrained_tokenizer(str(folder)).eos_token_id)
