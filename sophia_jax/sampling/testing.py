"""Test double: a tiny word-level chat tokenizer built offline (no downloads).

``tiny_tokenizer()`` is a ``PreTrainedTokenizerFast`` over a short word list with the ChatML /
InternVL special tokens and a ChatML jinja ``chat_template``. Whitespace runs are tokens of their
own, so decoding (plain concatenation) gives back the text. Layout: ``<pad>`` 0, ``[UNK]`` 1,
``<|endoftext|>`` 2, ``<|im_start|>`` 3, ``<|im_end|>`` 4; ``<img>``, ``</img>``,
``<IMG_CONTEXT>`` at ``image_token_id - 2 .. image_token_id`` (matching a test model's config),
or right after the words when ``image_token_id`` is None (a compact vocabulary); the words fill
the remaining ids in order.

Two options serve a world whose text is known in advance (the demo's, ``sophia.world``):
``phrases`` are literal strings (e.g. the fixed sentences of a prompt template) that become one
token each, matched before anything else, so a long fixed prompt costs a CPU model a handful of
positions; ``space_words`` gives every word a second form with one leading space (`` red``),
so running text costs about one token per word instead of two.
"""

from __future__ import annotations

import re
from typing import Sequence

WORDS = (
    "a", "an", "the", "is", "are", "of", "on", "in", "and", "to", "what", "describe", "image", "this", "picture",
    "cat", "dog", "red", "blue", "green", "sky", "tree", "man", "woman", "sitting", "standing", "answer",
    "question", "think", "step", "by", "so", "therefore", "because", "1", "2", "3", "4", "5", "+", "=", "?", ".",
    ",", ":", "system", "user", "assistant", "you", "helpful", "Image-1", "Image-2", "-",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CHAT_SPECIALS = ("<pad>", "[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
_IMAGE_SPECIALS = ("<img>", "</img>", "<IMG_CONTEXT>")


def _pattern(phrases: Sequence[str], space_words: bool) -> str:
    space = " ?" if space_words else ""
    literal = [re.escape(p) for p in sorted(set(phrases), key=len, reverse=True)]
    # Special tokens, backslash commands such as \boxed{3} and words are single pieces.
    return "|".join([*literal, r"<[^<>\s]+>", space + r"\\[A-Za-z]+\{[^{}\s]*\}", space + r"[A-Za-z0-9\-]+:?",
                     space + r"[^\sA-Za-z0-9\-]", r"\s+"])


def tiny_tokenizer(image_token_id: int | None = 500, words: Sequence[str] = WORDS,
                   chat_template: str | None = CHATML_TEMPLATE, *, phrases: Sequence[str] = (),
                   space_words: bool = False):
    """A ``PreTrainedTokenizerFast`` over ``words`` (and ``phrases``) plus whitespace; see the module docstring."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_CHAT_SPECIALS)}
    spaced = [" " + w for w in words] if space_words else []
    pieces = [p for p in dict.fromkeys(("\n", " ", "\n\n", *phrases, *words, *spaced)) if p not in vocab]
    if image_token_id is None:
        image_token_id = len(vocab) + len(pieces) + len(_IMAGE_SPECIALS) - 1
    reserved = dict(zip(_IMAGE_SPECIALS, range(image_token_id - 2, image_token_id + 1)))
    if min(reserved.values()) < len(vocab):
        raise ValueError(f"image_token_id {image_token_id} collides with the chat special tokens")
    next_id = len(vocab)
    for piece in pieces:
        while next_id in reserved.values():
            next_id += 1
        vocab[piece] = next_id
        next_id += 1
    vocab.update(reserved)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_pattern(phrases, space_words)), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", *_IMAGE_SPECIALS],
        chat_template=chat_template,
    )
