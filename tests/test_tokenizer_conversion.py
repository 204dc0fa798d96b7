"""InternLM2 sentencepiece tokenizers become tokenizer.json; no tokenizer load runs checkpoint code.

A tiny sentencepiece BPE model is trained here (byte fallback on, as InternLM2's is) and laid out
as InternLM2's is: its last six pieces are placeholders that ``tokenizer_config.json`` renames to
the chat tokens (92538-92543 in the real one), and InternVL's nine tokens follow the vocabulary
(92544-92552). It is written as an original OpenGVLab checkpoint directory: ``auto_map`` to
``tokenization_internlm2.py``, ``added_tokens.json``. Every Python file in it writes a marker and
raises, so running any of it fails the test.

``Reference`` restates what that checkpoint's ``InternLM2Tokenizer`` does on transformers' slow
base: split the text on the added tokens (by text, longest first), encode every other piece with
sentencepiece on its own, put BOS first. The converted tokenizer, loaded by ``AutoTokenizer``,
must give the same ids.
"""

import io
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece
import transformers
from flax import nnx
from sentencepiece import sentencepiece_model_pb2

import hf_models
from sophia_jax import checkpoint
from sophia_jax.checkpoint import CheckpointError, testing, tokenizer_assets
from sophia_jax.data import chat_templates
from sophia_jax.sophia.prompts import Prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_TOKENS = ("<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>")
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
TRAINED_PIECES = 600  # then six placeholders: the sentencepiece vocabulary is 606, the model's 615
# sentencepiece settings per variant: InternLM2-like (identity, no dummy prefix), Llama-like
# (dummy prefix), and sentencepiece's defaults (NFKC character map, extra spaces removed).
VARIANTS = {
    "identity": dict(normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False),
    "dummy-prefix": dict(normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True),
    "nfkc": dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True, add_dummy_prefix=True),
}
EDGE_TEXTS = [
    "", " ", "   ", "\n", "\t", " leading", "  two leading", "trailing ", "trailing two  ", " both ",
    "line one\nline two\n\n", "\ttab\tinside\t", "mixed \t\n whitespace \n\t ", "中文：图片中有什么？",
    "你是书生万象", "emoji 😀🎉 and 🐈", "café naïve ＡＢＣ ﬁ ①", "12345 + 678 = 13023", "the cat sat on the table.",
    "<|im_start|>user\nhi<|im_end|>\n", "a<|im_end|>b", " <|im_end|> ", "<img><IMG_CONTEXT><IMG_CONTEXT></img>\n",
    "<s>literal bos</s> <unk>", "<|im_start|><|im_end|>", "<box>[[1, 2, 3, 4]]</box>", "no added<|im_start", "▁ visible",
]
# Every Python file of the test checkpoints: leaves a marker and fails (transformers copies a
# checkpoint's modules elsewhere before importing them, so the marker's path is written in).
TRAP = "open({marker!r}, 'w').close()\nraise RuntimeError('checkpoint code ran')\n"


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("the a of image caption shows cat dog sitting on table red blue green picture question answer what is "
             "there how many people describe detail").split()
    cjk = "你是书生万象英文名由上海人工智能实验室清华大学及多家合作单位联合开发的多模态大语言模型图片中有什么"
    lines = []
    for _ in range(3000):
        toks = [rng.choice(words) if rng.random() < 0.7 else "".join(rng.choices(cjk, k=rng.randint(1, 4)))
                for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            toks.append(str(rng.randint(0, 10000)))
        lines.append(rng.choice(["", " "]) + " ".join(toks) + rng.choice([".", "?", "", "\t!", "  "]))
    prompts = Prompts.load()  # what InternVL prompts say, as a real vocabulary would have seen it
    return lines + [prompts.default_system, *prompts.caption.splitlines()] * 20


def _train(model_type="bpe", byte_fallback=True, **settings) -> sentencepiece_model_pb2.ModelProto:
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=out, model_type=model_type, vocab_size=TRAINED_PIECES,
        byte_fallback=byte_fallback, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, **settings)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(out.getvalue())
    return proto


def _with_placeholders(proto):
    """InternLM2's last six pieces are unused placeholders that the added tokens rename."""
    low = min(piece.score for piece in proto.pieces)
    for k in range(len(CHAT_TOKENS)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"[UNUSED_TOKEN_{141 + k}]", low - 1 - k, 1
    return proto


def _entry(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_internlm2_tokenizer(directory: str, proto) -> dict[str, int]:
    """An original InternVL2.5 (InternLM2) checkpoint's tokenizer files; returns the added token ids."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(proto.SerializeToString())
    size = len(proto.pieces)
    ids = {"<unk>": 0, "<s>": 1, "</s>": 2}
    ids.update({t: size - len(CHAT_TOKENS) + i for i, t in enumerate(CHAT_TOKENS)})
    ids.update({t: size + i for i, t in enumerate(INTERNVL_TOKENS)})
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): _entry(t) for t, i in ids.items()},
        "additional_special_tokens": [*CHAT_TOKENS[::-1], *INTERNVL_TOKENS],
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer", "unk_token": "<unk>",
    }
    files = {
        "tokenizer_config.json": config,
        "added_tokens.json": {t: ids[t] for t in INTERNVL_TOKENS},
        "special_tokens_map.json": {"additional_special_tokens": config["additional_special_tokens"],
                                    "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"},
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "w") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
    for module in ("tokenization_internlm2.py", "configuration_internvl_chat.py", "modeling_internvl_chat.py",
                   "configuration_internlm2.py"):
        with open(os.path.join(directory, module), "w") as f:
            f.write(TRAP.format(marker=os.path.join(directory, "RAN")))
    return ids


def _with_auto_map(config: dict) -> dict:
    """An original internvl_chat config.json, pointing at the checkpoint's code as the real ones do."""
    config = dict(config, auto_map={"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                                    "AutoModel": "modeling_internvl_chat.InternVLChatModel"})
    config["llm_config"] = dict(config["llm_config"], auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"})
    return config


class Reference:
    """What the checkpoint's ``InternLM2Tokenizer`` does (sentencepiece + transformers' slow splitting)."""

    def __init__(self, directory: str):
        self.sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, "tokenizer.model"))
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            config = json.load(f)
        with open(os.path.join(directory, "added_tokens.json")) as f:
            self.added = {**json.load(f), **{e["content"]: int(i) for i, e in config["added_tokens_decoder"].items()}}
        assert not any(e["lstrip"] or e["rstrip"] for e in config["added_tokens_decoder"].values())
        self.split = re.compile("|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, start = [], 0
        for match in [*self.split.finditer(text), None]:
            end = match.start() if match else len(text)
            if end > start:  # empty pieces are skipped
                ids += [self.sp.piece_to_id(p) for p in self.sp.encode(text[start:end], out_type=str)]
            if match:
                ids.append(self.added[match.group()])
                start = match.end()
        return ([self.sp.bos_id()] if add_special_tokens else []) + ids


def _chat_prompt(num_tiles=(2,), tokens_per_tile=4) -> str:
    prompts = Prompts.load()
    return chat_templates.render_internvl2_5(prompts.caption, num_tiles=list(num_tiles),
                                             tokens_per_tile=tokens_per_tile, system_message=prompts.default_system)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """variant -> (original directory, converted directory, added token ids)."""
    out = {}
    for name, settings in VARIANTS.items():
        root = tmp_path_factory.mktemp(name)
        original, target = str(root / "original"), str(root / "converted")
        ids = write_internlm2_tokenizer(original, _with_placeholders(_train(**settings)))
        with open(os.path.join(original, "config.json"), "w") as f:
            json.dump(_with_auto_map({"model_type": "internvl_chat", "llm_config": {"model_type": "internlm2"}}), f)
        os.makedirs(target)
        tokenizer_assets.plan_assets(original).write(target)
        out[name] = original, target, ids
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_tokenizer_encodes_as_the_internlm2_reference(converted, variant):
    original, target, ids = converted[variant]
    reference = Reference(original)
    fast = transformers.AutoTokenizer.from_pretrained(target, trust_remote_code=False)
    assert fast.is_fast and len(fast) == TRAINED_PIECES + len(CHAT_TOKENS) + len(INTERNVL_TOKENS)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id, fast.unk_token_id) == (1, 2, 2, 0)
    assert {t: fast.convert_tokens_to_ids(t) for t in ids} == ids
    prompt = _chat_prompt()
    for text in [prompt, *EDGE_TEXTS]:
        for special in (True, False):
            got = fast(text, add_special_tokens=special)["input_ids"]
            assert got == reference.encode(text, special), (text, special)
    want = reference.encode(prompt)
    assert want[0] == 1 and want[1] == ids["<|im_start|>"] and want.count(ids["<IMG_CONTEXT>"]) == 8
    # Decoding: plain text as sentencepiece decodes it, which is the text itself unless the model
    # normalises it (nfkc) or the text holds a literal "▁" (sentencepiece's own space mark).
    exact = [text for text in [prompt, *EDGE_TEXTS] if "\u2581" not in text]
    for text in EDGE_TEXTS:
        if not reference.split.search(text):
            sp_ids = reference.sp.encode(text)
            assert fast.decode(reference.encode(text), skip_special_tokens=True) == reference.sp.decode(sp_ids)
            if variant != "nfkc" and text in exact:
                assert fast.decode(sp_ids) == text
    if variant == "identity":  # no dummy prefix: every text decodes back exactly, added tokens and all
        for text in exact:
            assert fast.decode(reference.encode(text, False)) == text
            assert fast.decode(reference.encode(text), skip_special_tokens=False) == "<s>" + text


def test_conversion_drops_every_auto_map_and_runs_no_checkpoint_code(converted):
    original, target, _ = converted["identity"]
    config = _read(target, "tokenizer_config.json")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in config
    assert "auto_map" not in json.dumps(_read(target, "config.json"))
    assert _read(original, "tokenizer_config.json")["auto_map"]  # the source is left as it was
    assert not any(os.path.exists(os.path.join(d, "RAN")) for d in (original, target))


def _read(directory, name):
    with open(os.path.join(directory, name)) as f:
        return json.load(f)


def test_internlm2_policy_prompt_stops_and_image_token_end_to_end(converted, tmp_path):
    """convert an InternLM2 InternVL, then prompt ids, stop ids, image-token id and logits agree."""
    import torch

    original, _, ids = converted["identity"]
    vocab = len(tokenizer_assets.read_sentencepiece(os.path.join(original, "tokenizer.model")).pieces) + 9
    text = hf_models.text_config("llama")
    # The prompt is ~2,000 tokens (the CJK system message falls back to bytes): keep it below max_position_embeddings, where the original
    # config's dynamic NTK scaling (which the transformers Llama reference lacks) is a no-op.
    text.vocab_size, text.max_position_embeddings = vocab, 4096
    cfg = transformers.InternVLConfig(vision_config=hf_models.vision_config("300m"), text_config=text,
                                      image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=4, downsample_ratio=0.5,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.InternVLForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    hf_dir = str(tmp_path / "hf")
    tensors, config = testing.original_internvl(hf_models.state_dict_numpy(model), cfg.to_dict(), "internlm2")
    testing.write_checkpoint(hf_dir, tensors, _with_auto_map(config))
    for name in os.listdir(original):
        if name != "config.json":
            with open(os.path.join(original, name), "rb") as src, open(os.path.join(hf_dir, name), "wb") as dst:
                dst.write(src.read())
    ckpt = checkpoint.convert_hf(hf_dir, tmp_path / "ckpt", dtype="float32", progress=False)

    tokenizer = checkpoint.load_tokenizer(ckpt)
    ours = checkpoint.load(ckpt)
    assert ours.config.image_token_id == ids["<IMG_CONTEXT>"] and ours.config.tokens_per_tile == 4
    prompts = Prompts.load()
    prompt_ids = chat_templates.internvl_prompt_ids(tokenizer, prompts.caption, num_tiles=[2], tokens_per_tile=4,
                                                    system_message=prompts.default_system)
    assert prompt_ids == Reference(original).encode(_chat_prompt((2,), 4)) and len(prompt_ids) < 4096
    assert chat_templates.internvl_stop_token_ids(tokenizer) == (ids["<|im_end|>"], 2)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 56, 56)).astype(np.float32)
    batch = np.asarray([prompt_ids], np.int32), np.ones((1, len(prompt_ids)), np.int32), pixels
    logits = np.asarray(nnx.jit(lambda m, ids, mask, pix: m(ids, pix, mask))(ours, batch[0], batch[1], pixels))
    np.testing.assert_allclose(logits, hf_models.torch_logits(model, *batch), atol=1e-4)
    assert not os.path.exists(os.path.join(original, "RAN"))


def test_unconverted_remote_code_directory_fails_fast_without_prompting(converted, tmp_path):
    original, _, _ = converted["identity"]
    with pytest.raises(CheckpointError, match="sophia-jax convert") as caught:
        checkpoint.load_tokenizer(original)
    assert "\n" not in str(caught.value) and "sophia-jax convert --config.hf_dir=" in str(caught.value)
    stripped = str(tmp_path / "no-auto-map")  # without auto_map transformers would guess a tokenizer: refused too
    os.makedirs(stripped)
    tokenizer_config = _read(original, "tokenizer_config.json")
    del tokenizer_config["auto_map"]
    with open(os.path.join(stripped, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f)
    with pytest.raises(CheckpointError, match="'InternLM2Tokenizer' is not transformers' own"):
        checkpoint.load_tokenizer(stripped)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("SOPHIA_JAX_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "sophia_jax.cli", "train", "--config", "train",
                           f"--config.model.checkpoint={original}", f"--config.output_dir={tmp_path / 'run'}"],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and errors[0].startswith("sophia-jax train: error: ") and "sophia-jax convert" in errors[0]
    assert "[y/N]" not in done.stdout + done.stderr and not os.path.exists(os.path.join(original, "RAN"))


def test_native_tokenizer_with_auto_map_loads_natively_and_loses_it(tmp_path):
    """Qwen-based InternVL tokenizers name a native class and carry an auto_map: load it natively, drop it."""
    source, target = str(tmp_path / "qwen"), str(tmp_path / "out")
    testing.write_tokenizer(source, 500)
    config = _read(source, "tokenizer_config.json")
    config["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    with open(os.path.join(source, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(source, "tokenization_internlm2.py"), "w") as f:
        f.write(TRAP.format(marker=os.path.join(source, "RAN")))
    assert checkpoint.load_tokenizer(source).convert_tokens_to_ids("<IMG_CONTEXT>") == 500
    os.makedirs(target)
    written = tokenizer_assets.plan_assets(source).write(target)
    assert "tokenizer_config.json" in written and "auto_map" not in _read(target, "tokenizer_config.json")
    assert checkpoint.load_tokenizer(target).convert_tokens_to_ids("<IMG_CONTEXT>") == 500
    assert not os.path.exists(os.path.join(source, "RAN"))


@pytest.mark.parametrize("settings, problem", [
    (dict(model_type="unigram"), "model_type 1"),
    (dict(byte_fallback=False), "byte_fallback off"),
])
def test_unsupported_sentencepiece_models_are_refused(tmp_path, settings, problem):
    directory = str(tmp_path / "tok")
    write_internlm2_tokenizer(directory, _with_placeholders(_train(**settings, **VARIANTS["identity"])))
    with pytest.raises(CheckpointError, match=re.escape(problem)):
        tokenizer_assets.plan_assets(directory)


def test_added_token_ids_past_the_vocabulary_must_follow_on(tmp_path):
    directory = str(tmp_path / "tok")
    ids = write_internlm2_tokenizer(directory, _with_placeholders(_train(**VARIANTS["identity"])))
    config = _read(directory, "tokenizer_config.json")
    last = config["added_tokens_decoder"].pop(str(ids["</box>"]))
    config["added_tokens_decoder"][str(ids["</box>"] + 1)] = last
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    os.remove(os.path.join(directory, "added_tokens.json"))
    with pytest.raises(CheckpointError, match="without gaps"):
        tokenizer_assets.plan_assets(directory)
