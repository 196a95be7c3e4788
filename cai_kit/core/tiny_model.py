"""A tiny random Llama with a small BPE tokenizer and a ChatML chat template, built in code.

Used by the fast tests and by `recipes/tiny.yaml` (`model: tiny-random`): it exercises every code
path of generate/train/eval in seconds without downloading anything. Its outputs are noise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A few lines of text so the BPE merges are English-like; any text would do.
CORPUS = [
    "The assistant answers the question clearly and helps the person with what they asked.",
    "Point out every way the answer could hurt someone, then rewrite it so it helps safely.",
    "How do I bake bread at home? Mix flour, water, salt and yeast, knead, rest and bake.",
    "I can't help with that, but here is a safer way to get what you need.",
    "Critique: the answer gives dangerous instructions. Revision: here is a safe answer.",
    "user assistant system you are a helpful assistant named Tiny.",
    "Which answer is less likely to cause harm while still helping the person? A or B.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    """Build (once) and save the tiny model and tokenizer under `target`; return the folder."""
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tiny-") as tmp:
        staged = Path(tmp) / "model"
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        (staged / "README.md").write_text(
            "---\nlicense: apache-2.0\n---\nTiny random Llama built by cai-kit for tests.\n"
        )
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    return target
