"""A guard model that judges by construction: a one-layer Llama whose weights are set by hand
so that, greedily decoded, it answers `Yes` when the conversation holds one of its deny-listed
words and `No` otherwise, then ends its turn. Saved as a Hugging Face folder that any engine
loads like another Llama (nimble serves it with its transformers engine).

Why: SmolLM2-135M is no judge of safety (six prompts on six harmful and six harmless
questions, greedy: 0 to 5 of 12 right, "No" to nearly everything; the figures are in
tests/clients/test_nemo_guardrails.py), and no real guard model's weights can be downloaded
here. This one is honest about what it is,
a keyword filter in a transformer's shape; it lets a test prove the plumbing around a
judge (who asks it, what it is sent, how its verdict is read) with a verdict known in advance.

How the weights decide (hidden size 8; the dimensions of the residual stream):
- 0: 1 in the embedding of a deny-listed word; 1: 1 in every embedding (keeps the RMS norm
  away from zero); 3: 1 in the embeddings of the answers `Yes` and `No`.
- attention: queries and keys are zero, so every position attends evenly to all positions
  up to it; the values carry dimension 0 and the output writes their mean into dimension 2.
  At the last position, dimension 2 is the share of deny-listed words (more than zero iff
  there is one). The MLP is zero.
- the head: logit(Yes) = 1000 x dim 2, logit(No) = 1 x dim 1, logit(</s>) = 10^6 x dim 3
  (the token just read is an answer), every other logit 0. One deny-listed word among
  fewer than 2000 tokens is enough for `Yes`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

DENY_WORDS = ("bomb", "explosive", "poison", "weapon")
ANSWERS = ("Yes", "No")
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONTEXT = 2048
_HIDDEN = 8
_DENY, _ONE, _SHARE, _ANSWERED = range(4)


def build_keyword_guard(folder: Path) -> Path:
    """Write the guard (tokenizer, chat template, fp32 weights) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {token: i for i, token in enumerate([*specials, *ANSWERS, *DENY_WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # "Bomb?" reads as "bomb" and "?": every other word is <unk>, which weighs nothing
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
        model_max_length=CONTEXT,
    )
    fast.chat_template = TEMPLATE
    fast.save_pretrained(str(folder))

    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=_HIDDEN,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=CONTEXT,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        embed = model.model.embed_tokens.weight
        embed[:, _ONE] = 1.0
        for word in DENY_WORDS:
            embed[vocab[word], _DENY] = 1.0
        for word in ANSWERS:
            embed[vocab[word], _ANSWERED] = 1.0
        layer = model.model.layers[0]
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        layer.self_attn.v_proj.weight[0, _DENY] = 1.0
        layer.self_attn.o_proj.weight[_SHARE, 0] = 1.0
        model.model.norm.weight.fill_(1.0)
        head = model.lm_head.weight
        head[vocab["Yes"], _SHARE] = 1000.0
        head[vocab["No"], _ONE] = 1.0
        head[vocab["</s>"], _ANSWERED] = 1e6
    model.generation_config.do_sample = False
    model.save_pretrained(str(folder))
    return folder
