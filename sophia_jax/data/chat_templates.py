"""Chat templates: InternVL's ``internvl2_5`` and the text reasoner's own.

``internvl2_5`` is rendered here, as InternVL's ``conversation.py`` does (MPT style), for all
InternVL2.5 and InternVL3 checkpoints:

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<img><IMG_CONTEXT>*(tpt*tiles)</img>\\n
    {question}<|im_end|>\\n<|im_start|>assistant\\n

Each ``<image>`` placeholder becomes ``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile x tiles) +
``</img>``; a single image whose text has no placeholder gets ``<image>\\n`` prepended, as
``InternVLChatModel.chat`` does. The original always has a system turn (default: the InternVL
system message below); ``system_message=None`` drops it, which is what the ``-hf`` processors'
template renders.

Generation must stop on ``<|im_end|>``: the LLM configs' ``eos_token_id`` is often
``<|endoftext|>`` (Qwen) or ``</s>`` (InternLM2), which an instruct model never emits at the end of
a turn. ``internvl_stop_token_ids`` returns both.

The reasoner uses the jinja template shipped with its tokenizer (``apply_chat_template``);
``stop_token_ids`` adds whichever common end-of-turn tokens its vocabulary has to its eos.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

from sophia_jax.errors import UserError

INTERNVL_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"

# End-of-turn markers of common chat models; ``stop_token_ids`` uses those present in a vocab.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class TemplateError(UserError, ValueError):
    """Messages or images that a template cannot render."""


def _as_messages(messages: str | Sequence[Message]) -> list[dict]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = [dict(m) for m in messages]
    for m in out:
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise TemplateError(f"bad message {m!r}: need role system/user/assistant and string content")
    return out


def image_block(num_tiles: int, tokens_per_tile: int) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile x num_tiles) + ``</img>``."""
    if num_tiles < 1:
        raise TemplateError(f"an image needs at least one tile, got {num_tiles}")
    return IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END


def expand_images(text: str, num_tiles: Sequence[int], tokens_per_tile: int) -> str:
    """Replaces the ``<image>`` placeholders of ``text`` in order by image blocks."""
    count = text.count(IMAGE_PLACEHOLDER)
    if count != len(num_tiles):
        raise TemplateError(f"{count} {IMAGE_PLACEHOLDER} placeholders for {len(num_tiles)} images")
    pieces = text.split(IMAGE_PLACEHOLDER)
    out = pieces[0]
    for tiles, piece in zip(num_tiles, pieces[1:]):
        out += image_block(tiles, tokens_per_tile) + piece
    return out


def number_images(text: str, num_images: int) -> str:
    """The user text of a question with ``num_images`` images, in InternVL's multi-image format.

    One image: the text itself (the template prepends ``<image>\\n``). Several: one ``Image-k: <image>`` line per
    image before the text, as InternVL's chat examples and its VLMEvalKit evaluation write them.
    """
    if num_images <= 1:
        return text
    return "".join(f"Image-{k}: {IMAGE_PLACEHOLDER}\n" for k in range(1, num_images + 1)) + text


def render_internvl2_5(
    messages: str | Sequence[Message],
    *,
    num_tiles: Sequence[int] = (),
    tokens_per_tile: int = 256,
    system_message: str | None = INTERNVL_SYSTEM_MESSAGE,
    add_generation_prompt: bool = True,
) -> str:
    """The ``internvl2_5`` prompt string with image blocks expanded.

    messages: a question string or a list of turns; a leading system turn replaces
    ``system_message``. num_tiles: tiles per image (thumbnail included), in placeholder order.
    One image and no placeholder: ``<image>\\n`` is prepended to the first user turn.
    """
    turns = _as_messages(messages)
    if turns and turns[0]["role"] == "system":
        system_message = turns.pop(0)["content"]
    users = [m for m in turns if m["role"] == "user"]
    if not users:
        raise TemplateError("no user turn to render")
    if len(num_tiles) == 1 and not any(IMAGE_PLACEHOLDER in m["content"] for m in turns):
        users[0]["content"] = IMAGE_PLACEHOLDER + "\n" + users[0]["content"]
    text = "" if system_message is None else f"{IM_START}system\n{system_message}{IM_END}\n"
    for m in turns:
        if m["role"] == "system":
            raise TemplateError("a system turn may only come first")
        text += f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n"
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return expand_images(text, num_tiles, tokens_per_tile)


def internvl_prompt_ids(
    tokenizer,
    messages: str | Sequence[Message],
    *,
    num_tiles: Sequence[int] = (),
    tokens_per_tile: int = 256,
    system_message: str | None = INTERNVL_SYSTEM_MESSAGE,
    add_special_tokens: bool = True,
) -> list[int]:
    """Token ids of the ``internvl2_5`` prompt (as ``chat()`` tokenises it: special tokens on).

    Fails when the tokenizer does not map ``<IMG_CONTEXT>`` to one token per occurrence.
    """
    text = render_internvl2_5(messages, num_tiles=num_tiles, tokens_per_tile=tokens_per_tile,
                              system_message=system_message)
    ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    expected = tokens_per_tile * sum(num_tiles)
    if sum(1 for t in ids if t == context_id) != expected:
        raise TemplateError(f"tokenizer gave {ids.count(context_id)} {IMG_CONTEXT} ids, expected {expected}; "
                            f"is {IMG_CONTEXT} a special token of this tokenizer?")
    return ids


def _token_id(tokenizer, token: str) -> int | None:
    if token not in tokenizer.get_vocab():
        return None
    return tokenizer.convert_tokens_to_ids(token)


def _eos_ids(tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def internvl_stop_token_ids(tokenizer) -> tuple[int, ...]:
    """``<|im_end|>`` (what ``chat()`` stops on) plus the tokenizer's eos."""
    im_end = _token_id(tokenizer, IM_END)
    if im_end is None:
        raise TemplateError(f"tokenizer has no {IM_END} token; not an InternVL chat tokenizer")
    return tuple(dict.fromkeys([im_end, *_eos_ids(tokenizer)]))


def render_chat(tokenizer, messages: str | Sequence[Message], *, add_generation_prompt: bool = True, **kwargs) -> str:
    """A prompt string from the tokenizer's own chat template (the reasoner's)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("tokenizer has no chat_template")
    return tokenizer.apply_chat_template(
        _as_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


def chat_prompt_ids(tokenizer, messages: str | Sequence[Message], *, add_generation_prompt: bool = True,
                    **kwargs) -> list[int]:
    """Token ids of ``render_chat``; the template writes any BOS itself, so none is added."""
    text = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's eos ids plus every known end-of-turn token in its vocabulary."""
    ids = _eos_ids(tokenizer) + [i for i in (_token_id(tokenizer, t) for t in END_OF_TURN_TOKENS) if i is not None]
    return tuple(dict.fromkeys(ids))


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A named template: prompt ids from messages (and tiles), and the ids that end a turn."""

    name: str
    prompt_ids: Callable[..., list[int]]
    stop_token_ids: Callable[..., tuple[int, ...]]


TEMPLATES: dict[str, ChatTemplate] = {
    "internvl2_5": ChatTemplate("internvl2_5", internvl_prompt_ids, internvl_stop_token_ids),
    "tokenizer": ChatTemplate("tokenizer", chat_prompt_ids, stop_token_ids),
}


def get_template(name: str) -> ChatTemplate:
    """``internvl2_5`` or ``tokenizer`` (the tokenizer's own jinja template)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}") from None
