"""Chat templates: internvl2_5 rendering and image expansion, the tokenizer's own template, stop ids."""

import pytest

from sophia_jax.data import chat_templates as ct
from sophia_jax.sampling.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(image_token_id=500)


def test_internvl2_5_single_image_matches_reference_layout():
    text = ct.render_internvl2_5("What is this?", num_tiles=[2], tokens_per_tile=3)
    expected = (
        "<|im_start|>system\n" + ct.INTERNVL_SYSTEM_MESSAGE + "<|im_end|>\n"
        "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 6 + "</img>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == expected
    assert ct.INTERNVL_SYSTEM_MESSAGE.startswith("你是书生·万象") and "InternVL" in ct.INTERNVL_SYSTEM_MESSAGE


def test_internvl2_5_multi_image_multi_turn_and_system_override():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Image-1: <image>\nImage-2: <image>\ncompare"},
        {"role": "assistant", "content": "same"},
        {"role": "user", "content": "sure?"},
    ]
    text = ct.render_internvl2_5(messages, num_tiles=[1, 3], tokens_per_tile=2)
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\nImage-1: <img>" + "<IMG_CONTEXT>" * 2 + "</img>\nImage-2: <img>"
        + "<IMG_CONTEXT>" * 6 + "</img>\ncompare<|im_end|>\n"
        "<|im_start|>assistant\nsame<|im_end|>\n<|im_start|>user\nsure?<|im_end|>\n<|im_start|>assistant\n"
    )
    # No system turn at all (the -hf processors' template), text only.
    assert ct.render_internvl2_5("hi", system_message=None) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("text,tiles", [("two <image> <image>", [1]), ("none", [1, 2]), ("<image>", [])])
def test_placeholder_count_must_match_images(text, tiles):
    with pytest.raises(ct.TemplateError, match="placeholders"):
        ct.render_internvl2_5(text, num_tiles=tiles, tokens_per_tile=4)


def test_internvl_prompt_ids_and_stop_ids(tok):
    ids = ct.internvl_prompt_ids(tok, "describe this image .", num_tiles=[2], tokens_per_tile=4)
    context = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids.count(context) == 8
    start = ids.index(tok.convert_tokens_to_ids("<img>"))
    assert ids[start + 1 : start + 9] == [context] * 8 and ids[start + 9] == tok.convert_tokens_to_ids("</img>")
    assert ids[:2] == [tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("system")]
    assert ct.internvl_stop_token_ids(tok) == (tok.convert_tokens_to_ids("<|im_end|>"),)


def test_reasoner_template_comes_from_the_tokenizer(tok):
    messages = [{"role": "user", "content": "what is 2 + 3 ?"}]
    text = ct.render_chat(tok, messages)
    assert text == "<|im_start|>user\nwhat is 2 + 3 ?<|im_end|>\n<|im_start|>assistant\n"
    ids = ct.chat_prompt_ids(tok, messages)
    assert tok.decode(ids) == text
    assert ct.get_template("tokenizer").prompt_ids(tok, "what is 2 + 3 ?") == ids
    # eos (<|im_end|>) plus the other end-of-turn tokens the vocabulary has.
    assert ct.stop_token_ids(tok) == (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"))


def test_unknown_template_lists_known_ones():
    with pytest.raises(ct.TemplateError, match="internvl2_5"):
        ct.get_template("llava")


def test_tiny_tokenizer_phrases_and_space_words():
    phrase = "Write a complete description of this image."
    tok = tiny_tokenizer(image_token_id=None, words=("red", "circle", "\\boxed{3}", "."), phrases=(phrase,),
                         space_words=True)
    text = f"{phrase}\nred circle red \\boxed{{3}}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [phrase, "\n", "red", " circle", " red", " \\boxed{3}", "."]
    assert tok.decode(ids) == text
    plain = tiny_tokenizer(image_token_id=None, words=("red", "circle"))
    assert plain.convert_ids_to_tokens(plain("red circle", add_special_tokens=False)["input_ids"]) == \
        ["red", " ", "circle"]
