"""Test doubles for sampling and chat templates: a tiny tokenizer built offline.

``tiny_tokenizer()`` is a word-level ``PreTrainedTokenizerFast`` with the InternVL/ChatML special
tokens and a ChatML jinja ``chat_template``, small enough for the tiny test models (vocab 512,
``<IMG_CONTEXT>`` = 500 as in ``tests/hf_models.py``). Whitespace runs are tokens of their own, so
decoding (concatenation) gives back the text.
"""

from __future__ import annotations

WORDS = (
    "a", "an", "the", "is", "are", "of", "on", "in", "and", "to", "what", "describe", "image", "this", "picture",
    "cat", "dog", "red", "blue", "green", "sky", "tree", "man", "woman", "sitting", "standing", "answer",
    "question", "think", "step", "by", "so", "therefore", "because", "1", "2", "3", "4", "5", "+", "=", "?", ".",
    ",", ":", "system", "user", "assistant", "you", "helpful", "are", "Image-1", "Image-2", "-",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(image_token_id: int = 500):
    """A ``PreTrainedTokenizerFast`` over WORDS; specials sit at fixed ids near ``image_token_id``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {
        "<pad>": 0, "[UNK]": 1, "<|endoftext|>": 2, "<|im_start|>": 3, "<|im_end|>": 4,
        "<img>": image_token_id - 2, "</img>": image_token_id - 1, "<IMG_CONTEXT>": image_token_id,
    }
    vocab = dict(specials)
    for piece in ("\n", " ", "\n\n", *WORDS):
        if piece not in vocab:
            vocab[piece] = len(vocab) - 3 + 5  # ids 5, 6, ... (3 specials live near image_token_id)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+|[A-Za-z0-9\-]+|[^\sA-Za-z0-9\-]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"],
        chat_template=CHATML_TEMPLATE,
    )
