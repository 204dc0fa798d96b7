"""Tokenizer files that load without running a checkpoint's own Python.

A checkpoint is untrusted input, so no code it ships is ever run: every tokenizer load goes through
``load_tokenizer``, which passes ``trust_remote_code=False`` (so transformers can never stop on its
interactive y/N question) and turns a directory that still names checkpoint code into a one-line
error saying to run ``sophia-jax convert`` first.

``sophia-jax convert`` (and ``save`` / ``export``) copies the tokenizer files through ``plan_assets``:

* every ``auto_map`` (the pointer to code inside the checkpoint) is dropped from the JSON files;
  the Qwen-based InternVL tokenizers then load as transformers' own classes;
* an InternLM2 tokenizer (InternVL2.5-8B and the other internlm2-based models) exists only as a
  sentencepiece ``tokenizer.model`` plus the checkpoint's ``InternLM2Tokenizer``. That class splits
  the text on its added tokens (matched by text, at the ids ``tokenizer_config.json`` gives them),
  encodes every other piece with sentencepiece on its own and puts BOS first.
  ``sentencepiece_tokenizer`` builds the same pipeline with the ``tokenizers`` library from the
  model file's data, and the conversion writes it as ``tokenizer.json`` with a native
  ``tokenizer_class``, then checks every added token's id and a few probe texts against
  sentencepiece itself.

We build the pipeline here rather than call transformers' ``convert_slow_tokenizer``: its
converters need the slow tokenizer object (the checkpoint's class) and their normaliser and
prefix-space choices differ between releases, while the rules below follow the model file only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Iterable, Mapping

from sophia_jax.checkpoint.errors import CheckpointError

TOKENIZER_CONFIG, TOKENIZER_JSON, SENTENCEPIECE_MODEL = "tokenizer_config.json", "tokenizer.json", "tokenizer.model"
ADDED_TOKENS_JSON = "added_tokens.json"
# The checkpoint classes whose behaviour sentencepiece_tokenizer reproduces (slow and fast variants).
INTERNLM2_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")
NATIVE_CLASS = "PreTrainedTokenizerFast"  # transformers' generic class: tokenizer.json as written
# Texts encoded by both sentencepiece and the converted tokenizer when converting; any difference
# stops the conversion.
PROBE_TEXTS = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    "Describe the image in detail.\nWhat is 12 + 345?  Two  spaces,\ta tab, a trailing space ",
    " leading space, emoji 😀 and accents: café naïve",
)
_BPE, _NORMAL, _USER_DEFINED = 2, 1, 4  # sentencepiece ModelProto enums
_SPACE = "\u2581"  # sentencepiece's visible space


# ------------------------------------------------------------------------------------------------
# Loading


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _auto_tokenizer_entry(tokenizer_config: Mapping) -> object:
    auto_map = tokenizer_config.get("auto_map")
    if isinstance(auto_map, Mapping):
        return auto_map.get("AutoTokenizer")
    return auto_map  # the legacy form is the [slow, fast] pair itself


def _is_native(class_name: str | None) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if not class_name:
        return False
    return any(tokenizer_class_from_name(name) is not None for name in (class_name, class_name.removesuffix("Fast")))


def remote_tokenizer_class(directory: str) -> str | None:
    """The tokenizer class named by a directory's ``tokenizer_config.json`` that transformers lacks, if any.

    Such a class is code in the checkpoint (``auto_map`` points at it), or missing altogether; a
    native class with a stray ``auto_map`` loads natively, so that one is fine.
    """
    config = _read_json(os.path.join(directory, TOKENIZER_CONFIG)) or {}
    name = config.get("tokenizer_class")
    if name is None:
        return "(unnamed)" if _auto_tokenizer_entry(config) else None
    return None if _is_native(name) else name


def load_tokenizer(path: str | os.PathLike):
    """transformers' tokenizer of a checkpoint directory (ours or Hugging Face), never running its code."""
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):  # never a hub id: nothing is downloaded
        raise CheckpointError(f"{path}: not a directory")
    name = remote_tokenizer_class(path)
    if name is not None:
        raise CheckpointError(
            f"{os.path.join(path, TOKENIZER_CONFIG)}: tokenizer class {name!r} is not transformers' own but "
            f"code in the checkpoint, which is never run; convert it first: sophia-jax convert "
            f"--config.hf_dir={path} --config.out=OUT"
        )
    return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)


# ------------------------------------------------------------------------------------------------
# Converting a checkpoint's tokenizer files


def _without_auto_map(value):
    if isinstance(value, Mapping):
        return {k: _without_auto_map(v) for k, v in value.items() if k != "auto_map"}
    return value


def _has_auto_map(value) -> bool:
    return isinstance(value, Mapping) and ("auto_map" in value or any(_has_auto_map(v) for v in value.values()))


def _dumps(value: Mapping) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def rewritten_assets(directory: str, names: Iterable[str]) -> dict[str, str]:
    """New contents for those of ``names`` (asset files of ``directory``) that need any.

    JSON files lose their ``auto_map``; an InternLM2 tokenizer gains ``tokenizer.json`` and a
    ``tokenizer_config.json`` that names a native class. A tokenizer that needs checkpoint code of
    any other kind cannot be converted and is an error.
    """
    out: dict[str, str] = {}
    for name in names:
        if name.endswith(".json"):
            content = _read_json(os.path.join(directory, name))
            if _has_auto_map(content):
                out[name] = _dumps(_without_auto_map(content))
    remote = remote_tokenizer_class(directory)
    if remote is None:
        return out
    where = os.path.join(directory, TOKENIZER_CONFIG)
    if remote not in INTERNLM2_CLASSES:
        raise CheckpointError(f"{where}: tokenizer class {remote!r} is not transformers' own and cannot be "
                              f"converted (supported: {', '.join(INTERNLM2_CLASSES)})")
    tokenizer, config = internlm2_tokenizer(directory)
    out[TOKENIZER_JSON] = tokenizer.to_str(pretty=True)
    out[TOKENIZER_CONFIG] = _dumps(config)
    return out


@dataclasses.dataclass(frozen=True)
class Assets:
    """The asset files to carry from ``directory``, and the new text of those rewritten (or added)."""

    directory: str
    names: tuple[str, ...]
    rewritten: Mapping[str, str]

    def write(self, target: str) -> list[str]:
        """Copies the files into ``target``, rewritten ones as rewritten; returns the names written."""
        for name in self.names:
            if name not in self.rewritten:
                shutil.copy2(os.path.join(self.directory, name), os.path.join(target, name))
        for name, text in self.rewritten.items():
            with open(os.path.join(target, name), "w", encoding="utf-8") as f:
                f.write(text)
        return sorted({*self.names, *self.rewritten})


def plan_assets(directory: str | os.PathLike, exclude: Iterable[str] = ()) -> Assets:
    """The non-weight files of ``directory`` (less ``exclude``), checked and converted now.

    Callers plan before writing anything, so an unconvertible tokenizer fails before any weight
    is streamed, and on every process alike.
    """
    from sophia_jax.checkpoint.hf_source import asset_files

    directory = os.fspath(directory)
    names = tuple(name for name in asset_files(directory) if name not in set(exclude))
    return Assets(directory, names, rewritten_assets(directory, names))


# ------------------------------------------------------------------------------------------------
# InternLM2: sentencepiece model + added tokens -> tokenizers pipeline


def read_sentencepiece(path: str):
    """The ``ModelProto`` of a sentencepiece model file (read as data)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except Exception as e:  # protobuf's DecodeError
        raise CheckpointError(f"{path}: not a sentencepiece model ({e})") from None
    return proto


def check_supported(proto, path: str) -> None:
    """The model settings ``sentencepiece_tokenizer`` reproduces; anything else is an error."""
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != _BPE:
        problems.append(f"model_type {trainer.model_type} (only BPE = {_BPE})")
    if not trainer.byte_fallback:
        problems.append("byte_fallback off")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix on")
    if not norm.escape_whitespaces:
        problems.append("escape_whitespaces off")
    if problems:
        raise CheckpointError(f"{path}: unsupported sentencepiece settings: {'; '.join(problems)}")


def sentencepiece_normalizer(norm):
    """sentencepiece's normaliser as a ``tokenizers`` sequence, in sentencepiece's order.

    The character map first, then (optionally) extra spaces removed, a leading ``▁`` when
    ``add_dummy_prefix`` (only on non-empty text, like sentencepiece), and spaces made ``▁``.
    Applied to each piece of text between added tokens, as the slow tokenizer encodes each piece alone.
    """
    from tokenizers import Regex, normalizers

    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:  # sentencepiece counts only the space character here
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(_SPACE))
    steps.append(normalizers.Replace(" ", _SPACE))
    return normalizers.Sequence(steps)


def bpe_merges(proto, vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """Merges ranked as sentencepiece applies them: the highest-scoring resulting piece first.

    sentencepiece BPE joins the adjacent pair whose concatenation is the best-scored normal piece;
    every split of a normal piece into two normal pieces is one merge, ranked by that piece's score.
    """
    normal = {piece.piece: (piece.score, i) for i, piece in enumerate(proto.pieces)
              if piece.type == _NORMAL and vocab.get(piece.piece) == i}
    ranked = []
    for token, (score, index) in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def sentencepiece_tokenizer(proto, added_tokens: Mapping[int, object], *, bos: int | None, eos: int | None,
                            where: str = "sentencepiece model"):
    """A ``tokenizers.Tokenizer`` that encodes as the slow sentencepiece tokenizer does.

    proto: the sentencepiece ``ModelProto`` (checked by ``check_supported``). added_tokens: id ->
    ``tokenizers.AddedToken``; an id inside the sentencepiece vocabulary renames that piece, ids
    past it follow on without gaps. bos / eos: ids the template puts before / after each sequence.
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    pieces = [piece.piece for piece in proto.pieces]
    for index, token in added_tokens.items():
        if index < len(pieces):
            pieces[index] = token.content
    vocab = {piece: i for i, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        repeated = next(piece for i, piece in enumerate(pieces) if vocab[piece] != i)
        raise CheckpointError(f"{where}: {repeated!r} is both a sentencepiece piece and an added token at another id")
    model = BPE(vocab, bpe_merges(proto, vocab), unk_token=proto.trainer_spec.unk_piece, fuse_unk=True,
                byte_fallback=True)
    tokenizer = Tokenizer(model)
    norm = proto.normalizer_spec
    tokenizer.normalizer = sentencepiece_normalizer(norm)
    # sentencepiece emits its user-defined pieces whole, wherever they occur.
    user_defined = sorted((piece.piece for i, piece in enumerate(proto.pieces)
                           if piece.type == _USER_DEFINED and i not in added_tokens), key=len, reverse=True)
    if user_defined:
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(map(re.escape, user_defined))), "isolated")
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:  # sentencepiece drops the dummy prefix again when decoding
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    tokenizer.add_tokens([added_tokens[i] for i in sorted(added_tokens)])
    around = [pieces[i] for i in (bos,) if i is not None], [pieces[i] for i in (eos,) if i is not None]

    def template(sequence: str, type_id: int) -> str:
        return " ".join(f"{token}:{type_id}" for token in (*around[0], sequence, *around[1]))

    tokenizer.post_processor = processors.TemplateProcessing(
        single=template("$A", 0), pair=template("$A", 0) + " " + template("$B", 1),
        special_tokens=[(pieces[i], i) for i in dict.fromkeys((bos, eos)) if i is not None])
    return tokenizer


def _flag(entry: Mapping, name: str) -> bool:
    return bool(entry.get(name, False))


def added_tokens_of(config: Mapping, added_json: Mapping | None, pieces: list[str], where: str) -> dict:
    """id -> ``tokenizers.AddedToken`` from ``added_tokens_decoder``, ``added_tokens.json`` and the special tokens.

    Every one is matched on the raw text (``normalized=False``), as the slow tokenizer's splitting
    does, so the text after an added token is encoded as a piece of its own. A special token listed
    nowhere else keeps the id of the sentencepiece piece it names, as the slow tokenizer gives it.
    """
    from tokenizers import AddedToken

    named = [config.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    specials = {t if isinstance(t, str) else (t or {}).get("content")
                for t in [*named, *(config.get("additional_special_tokens") or [])]}
    tokens = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        tokens[int(key)] = AddedToken(entry["content"], single_word=_flag(entry, "single_word"),
                                      lstrip=_flag(entry, "lstrip"), rstrip=_flag(entry, "rstrip"),
                                      normalized=False, special=_flag(entry, "special"))
    for content, index in (added_json or {}).items():
        if int(index) not in tokens:
            tokens[int(index)] = AddedToken(content, normalized=False, special=content in specials)
        elif tokens[int(index)].content != content:
            raise CheckpointError(f"{where}: id {index} is {tokens[int(index)].content!r} in {TOKENIZER_CONFIG} "
                                  f"but {content!r} in {ADDED_TOKENS_JSON}")
    contents = [token.content for token in tokens.values()]
    piece_ids = {piece: i for i, piece in enumerate(pieces)}
    for content in sorted(specials - set(contents) - {None}):
        if content not in piece_ids:
            raise CheckpointError(f"{where}: special token {content!r} has no id (not an added token nor a "
                                  f"sentencepiece piece)")
        if piece_ids[content] not in tokens:
            tokens[piece_ids[content]] = AddedToken(content, normalized=False, special=True)
    contents = [token.content for token in tokens.values()]
    if len(set(contents)) != len(contents):
        repeated = sorted({c for c in contents if contents.count(c) > 1})
        raise CheckpointError(f"{where}: added token {repeated[0]!r} has more than one id")
    return tokens


def _token_entry(token) -> dict:
    return {"content": token.content, "lstrip": token.lstrip, "normalized": False, "rstrip": token.rstrip,
            "single_word": token.single_word, "special": token.special}


def verify_tokenizer(tokenizer, proto, added_tokens: Mapping, where: str) -> None:
    """Every added token at its id and alone; the probe texts as sentencepiece encodes and decodes them."""
    import sentencepiece

    for index, token in sorted(added_tokens.items()):
        ids = tokenizer.encode(token.content, add_special_tokens=False).ids
        if tokenizer.token_to_id(token.content) != index or ids != [index]:
            raise CheckpointError(f"{where}: added token {token.content!r} should be id {index}, the converted "
                                  f"tokenizer gives {tokenizer.token_to_id(token.content)} (encodes as {ids})")
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    for text in PROBE_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if ids != processor.encode(text) or tokenizer.decode(ids) != processor.decode(ids):
            raise CheckpointError(f"{where}: the converted tokenizer encodes {text[:40]!r} differently from "
                                  f"sentencepiece; this model's settings are not supported")


def internlm2_tokenizer(directory: str):
    """(``tokenizers.Tokenizer``, new tokenizer_config) for an InternLM2 checkpoint directory."""
    where = os.path.join(directory, TOKENIZER_CONFIG)
    model_path = os.path.join(directory, SENTENCEPIECE_MODEL)
    if not os.path.exists(model_path):
        raise CheckpointError(f"{where}: names an InternLM2 tokenizer but {model_path} does not exist")
    config = _read_json(where)
    proto = read_sentencepiece(model_path)
    check_supported(proto, model_path)
    added = added_tokens_of(config, _read_json(os.path.join(directory, ADDED_TOKENS_JSON)),
                            [piece.piece for piece in proto.pieces], where)
    size = len(proto.pieces)
    beyond = sorted(i for i in added if i >= size)
    if beyond != list(range(size, size + len(beyond))):
        raise CheckpointError(f"{where}: added token ids past the {size} sentencepiece pieces must follow on "
                              f"without gaps, got {beyond}")
    trainer = proto.trainer_spec
    # The slow class's defaults: BOS on, EOS off; its BOS / EOS ids are sentencepiece's own.
    ends = {}
    for role, sp_id, default in (("bos", trainer.bos_id, True), ("eos", trainer.eos_id, False)):
        if not config.get(f"add_{role}_token", default):
            continue
        named = config.get(f"{role}_token")
        named = named if isinstance(named, str) or named is None else named.get("content")
        if sp_id < 0 or (named is not None and named != proto.pieces[sp_id].piece
                         and named != getattr(added.get(sp_id), "content", None)):
            raise CheckpointError(f"{where}: add_{role}_token is set but {role}_token {named!r} is not "
                                  f"sentencepiece's {role} piece")
        ends[role] = sp_id
    tokenizer = sentencepiece_tokenizer(proto, added, bos=ends.get("bos"), eos=ends.get("eos"), where=where)
    verify_tokenizer(tokenizer, proto, added, where)
    new_config = _without_auto_map(config)
    new_config["tokenizer_class"] = NATIVE_CLASS
    new_config["add_bos_token"], new_config["add_eos_token"] = "bos" in ends, "eos" in ends
    new_config["added_tokens_decoder"] = {str(i): _token_entry(t) for i, t in sorted(added.items())}
    return tokenizer, new_config
