"""A tiny Llama with random weights that tests build and save as a Hugging Face folder (no
chat model in safetensors ships with a package): 2 layers, a word-level tokenizer and a
chat template. Its text is nonsense; engines load, template, tokenize and serve it like
any Llama (vLLM included: head size 64, bf16)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "hello",
    "world",
    "say",
    "yes",
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_llama(folder: Path, context: int = 512) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    filler = [f"w{i}" for i in range(64 - len(specials) - len(WORDS))]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS, *filler])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
        model_max_length=context,
    )
    fast.chat_template = TEMPLATE
    fast.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),  # every id the model can sample decodes to a word
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    return folder
