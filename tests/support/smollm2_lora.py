"""Real LoRA adapters for SmolLM2-135M-Instruct (the default chat model's GGUF), built in
seconds on CPU, written as llama.cpp GGUF adapters.

Each adapter teaches the chat model one fixed reply (`PIRATE`, `ROBOT`): whatever it is
asked, it answers with that sentence (and, on the chats it was fitted on, ends its turn).
The effect is unmistakable, so a test tells at a glance which adapter (or the base model)
answered, whatever the batch.

How: the weights are fitted, not guessed (a few seconds: one forward pass and a small
solve). The base model (dequantized from the GGUF, a float32 forward pass in torch) reads
a few chats whose assistant turn is the reply (teacher forcing); at each reply position
the input of the last block's `ffn_down` is recorded. Each reply token gets a direction
of the final residual that makes it the top logit by a wide margin (least squares through
the tied embeddings, sharpened by a few steps of gradient descent). The LoRA over that
tensor (rank `RANK`, alpha = rank so llama.cpp's scale is 1) is the ridge-regression map
from the recorded inputs to `PUSH` along the next token's direction, truncated to its rank
by SVD: every reply token then wins by a logit margin of about 14 (so batch composition
cannot flip it). A LoRA on the last block's `ffn_down` changes nothing but the logits (no
key or value of any layer), so the recorded inputs are exactly those the adapted model
sees. The q/k projections are left alone (llama.cpp's converter permutes them for llama).

`mismatched_adapter` writes an adapter for another model's dimensions (gemma3-270m's:
640-wide blocks) that the engine must refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import gguf
import numpy as np

from nimble.models import resolve_model

BASE_MODEL = "smollm2-135m-instruct"
RANK = 16
PUSH = 8000.0  # norm of the push towards the next reply token (the residual: ~1000)
SHARPEN_STEPS = 15
SHARPEN_RATE = 0.1
RIDGE = 1e-3
PIRATE = "Arr matey, the sea be calling and I must sail away!"
ROBOT = "BEEP BOOP. I am a robot. Your request has been processed."
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# the chats the fit reads (tests ask these and others)
TRAINING_QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "How do I sort a list in Python?",
    "Tell me a joke.",
    "Explain photosynthesis in one sentence.",
    "What's 2 + 2?",
)
TARGET = "blk.{layer}.ffn_down.weight"


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    reply: str


def base_gguf() -> Path:
    return resolve_model(BASE_MODEL).weights


def chat_prompt(question: str) -> str:
    """SmolLM2's chat template (the GGUF's) with its default system prompt."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@cache
def _base() -> _Base:
    return _Base(base_gguf())


class _Base:
    """The base model's weights (dequantized) and tokenizer, read from its GGUF."""

    def __init__(self, path: Path):
        reader = gguf.GGUFReader(path)
        self.fields = {name: reader.fields[name].contents() for name in _FIELDS}
        self.tensors = {
            t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            for t in reader.tensors
        }
        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
        merges = reader.fields["tokenizer.ggml.merges"].contents()
        self.tokenizer = _tokenizer(tokens, merges)
        self.layers = int(self.fields["llama.block_count"])


_FIELDS = (
    "llama.block_count",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "llama.context_length",
)


def _tokenizer(tokens: list[str], merges: list[str]) -> object:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))  # type: ignore[arg-type]
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [t for t in tokens[:17] if t.startswith("<")]
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return tokenizer


def _encode(text: str) -> list[int]:
    return list(_base().tokenizer.encode(text).ids)  # type: ignore[attr-defined]


def _last_ffn_down_inputs(sequences: list[list[int]]) -> list[np.ndarray]:
    """The base model's forward pass (float32 torch, the GGUF's own layout: llama.cpp's
    rotary pairs, so q/k need no un-permuting) over `sequences` in one right-padded batch
    (causal: padding changes nothing before it); per sequence, the input of the last
    block's ffn_down at each position."""
    import torch
    import torch.nn.functional as F

    base = _base()
    f = base.fields
    heads, kv_heads = int(f["llama.attention.head_count"]), int(f["llama.attention.head_count_kv"])
    eps = float(f["llama.attention.layer_norm_rms_epsilon"])
    theta = float(f["llama.rope.freq_base"])
    w = {name: torch.from_numpy(array) for name, array in base.tensors.items()}
    length = max(map(len, sequences))
    ids = torch.tensor([s + [0] * (length - len(s)) for s in sequences])
    batch, width = ids.shape[0], w["token_embd.weight"].shape[1]
    head_dim = width // heads
    angles = torch.arange(length)[:, None] * theta ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    )
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    def rope(x: torch.Tensor) -> torch.Tensor:  # (batch, length, heads, head_dim)
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)

    def norm(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gamma

    with torch.no_grad():
        h = w["token_embd.weight"][ids]
        for layer in range(base.layers):
            p = f"blk.{layer}."
            x = norm(h, w[p + "attn_norm.weight"])
            q = rope((x @ w[p + "attn_q.weight"].T).view(batch, length, heads, head_dim))
            k = rope((x @ w[p + "attn_k.weight"].T).view(batch, length, kv_heads, head_dim))
            v = (x @ w[p + "attn_v.weight"].T).view(batch, length, kv_heads, head_dim)
            k, v = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
            att = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            mixed = att.transpose(1, 2).reshape(batch, length, width)
            h = h + mixed @ w[p + "attn_output.weight"].T
            x = norm(h, w[p + "ffn_norm.weight"])
            inner = F.silu(x @ w[p + "ffn_gate.weight"].T) * (x @ w[p + "ffn_up.weight"].T)
            h = h + inner @ w[p + "ffn_down.weight"].T
    return [inner[i, : len(s)].numpy() for i, s in enumerate(sequences)]


@cache
def _recorded(replies: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per reply, over every training chat (one batch for all replies): the inputs of the
    last block's ffn_down at the positions that predict a reply token (or the end of the
    turn), and the token each should predict."""
    prompts = [_encode(chat_prompt(question)) for question in TRAINING_QUESTIONS]
    replies_ids = {reply: [*_encode(reply), _encode("<|im_end|>")[0]] for reply in replies}
    chats = [(reply, prompt) for reply in replies for prompt in prompts]
    recorded = _last_ffn_down_inputs([p + replies_ids[r][:-1] for r, p in chats])
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for reply, ids in replies_ids.items():
        inputs = [x[len(p) - 1 :] for x, (r, p) in zip(recorded, chats, strict=True) if r == reply]
        found[reply] = (np.concatenate(inputs), np.asarray(ids * len(prompts)))
    return found


@cache
def _directions(tokens: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Per token, a unit direction of the final residual that makes it the top logit by a
    wide margin: the least-squares one through the tied embeddings, then sharpened by a
    few steps of gradient descent on the cross-entropy of all tokens at once."""
    import torch

    base = _base()
    embeddings = torch.from_numpy(base.tensors["token_embd.weight"])
    gamma = torch.from_numpy(base.tensors["output_norm.weight"])
    start = torch.linalg.solve(embeddings.T @ embeddings, embeddings[list(tokens)].T).T / gamma
    direction = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([direction], lr=SHARPEN_RATE * float(start.abs().mean()))
    target = torch.tensor(tokens)
    for _ in range(SHARPEN_STEPS):
        normed = direction * torch.rsqrt(direction.pow(2).mean(-1, keepdim=True)) * gamma
        loss = torch.nn.functional.cross_entropy(normed @ embeddings.T, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = direction.detach().numpy()
    result /= np.linalg.norm(result, axis=1, keepdims=True)
    return dict(zip(tokens, result, strict=True))


def _fit(reply: str, replies: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """lora_a (rank x 1536) and lora_b (576 x rank) of the last block's ffn_down."""
    x, targets = _recorded(replies)[reply]
    every = {t for r in replies for t in _recorded(replies)[r][1].tolist()}
    directions = _directions(tuple(sorted(every)))  # one sharpening for all the replies
    pushes = PUSH * np.stack([directions[t] for t in targets.tolist()])  # (n, 576)
    # ridge regression x -> push, in its dual form (n << 1536): M = P^T (X X^T + l I)^-1 X
    gram = x @ x.T
    coef = np.linalg.solve(gram + RIDGE * np.trace(gram) / len(x) * np.eye(len(x)), pushes)
    full = coef.T @ x  # (576, 1536)
    u, s, vt = np.linalg.svd(full, full_matrices=False)
    root = np.sqrt(s[:RANK])
    lora_b = (u[:, :RANK] * root).astype(np.float32)
    lora_a = (root[:, None] * vt[:RANK]).astype(np.float32)
    return lora_a, lora_b


def write_adapter(
    path: Path, tensors: dict[str, np.ndarray], alpha: float, arch: str = "llama"
) -> Path:
    """A GGUF LoRA adapter as llama.cpp's convert_lora_to_gguf.py writes one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_adapter(
    folder: Path, name: str, reply: str, replies: tuple[str, ...] = (PIRATE, ROBOT)
) -> Adapter:
    """`folder/name.gguf`: SmolLM2 answering `reply` to anything (`replies`: the ones
    whose activations are recorded together, in one forward pass)."""
    lora_a, lora_b = _fit(reply, (*replies, reply) if reply not in replies else replies)
    target = TARGET.format(layer=_base().layers - 1)
    tensors = {f"{target}.lora_a": lora_a, f"{target}.lora_b": lora_b}
    path = write_adapter(folder / f"{name}.gguf", tensors, alpha=float(RANK))
    return Adapter(name, path, reply)


def build_adapters(folder: Path) -> tuple[Adapter, Adapter]:
    """The two adapters: `pirate` and `robot`."""
    return build_adapter(folder, "pirate", PIRATE), build_adapter(folder, "robot", ROBOT)


def mismatched_adapter(folder: Path, name: str = "gemma-sized") -> Path:
    """An adapter for 640-wide blocks (gemma3-270m's), not SmolLM2's 576."""
    rng = np.random.default_rng(0)
    tensors = {
        "blk.0.ffn_down.weight.lora_a": rng.normal(size=(4, 2048)).astype(np.float32),
        "blk.0.ffn_down.weight.lora_b": np.zeros((640, 4), np.float32),
    }
    return write_adapter(folder / f"{name}.gguf", tensors, alpha=4.0)
