"""HF -> Orbax -> model -> HF round trips for every checkpoint layout we read.

Each case is a tiny random transformers model written in one on-disk layout. We convert it,
load it (also straight from the HF directory and onto a 2x4 mesh), compare logits with the
transformers model in float32, export it back and let transformers load the export.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

import hf_models
from sophia_jax import checkpoint, sharding
from sophia_jax.checkpoint import convert, export, testing
from sophia_jax.checkpoint.safetensors_io import index_directory
from sophia_jax.models import CausalLM, InternVL

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _save_pretrained(model, directory):
    model.save_pretrained(directory)  # legacy prefixes: vision_tower., language_model.model., ...


def _write_native_model_prefix(model, directory):
    # The in-memory names (model.vision_tower., model.language_model., lm_head.), in several shards.
    model.config.save_pretrained(directory)
    testing.write_checkpoint(directory, hf_models.state_dict_numpy(model), _read_json(directory, "config.json"),
                             max_shard_bytes=300_000)


def _write_original(family, explicit_defaults):
    def write(model, directory):
        tensors, config = testing.original_internvl(
            hf_models.state_dict_numpy(model), model.config.to_dict(), family, explicit_defaults)
        testing.write_checkpoint(directory, tensors, config, max_shard_bytes=400_000)
        if family == "qwen2":
            testing.write_tokenizer(directory, hf_models.IMAGE_TOKEN, CHAT_TEMPLATE)
        else:  # InternLM2 repos list their added tokens in added_tokens.json
            with open(os.path.join(directory, "added_tokens.json"), "w") as f:
                json.dump({"<IMG_CONTEXT>": hf_models.IMAGE_TOKEN, "<|im_end|>": 501}, f)
        with open(os.path.join(directory, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": 501}, f)
    return write


CASES = {
    # name: (build the transformers model, write it to disk)
    "native-legacy": (lambda: hf_models.internvl("300m", "qwen2", seed=1), _save_pretrained),
    "native-model-prefix": (lambda: hf_models.internvl("6b", "llama", seed=2), _write_native_model_prefix),
    "original-qwen2": (lambda: hf_models.internvl("6b", "qwen2", seed=3), _write_original("qwen2", False)),
    "original-internlm2": (lambda: hf_models.internvl("300m", "llama", seed=4), _write_original("internlm2", True)),
    "qwen2": (lambda: hf_models.causal_lm("qwen2", seed=5), _save_pretrained),
    "qwen3-tied": (lambda: hf_models.causal_lm("qwen3", seed=6, tie_word_embeddings=True), _save_pretrained),
    "llama": (lambda: hf_models.causal_lm("llama", seed=7), _save_pretrained),
}
MESH_CASES = ["original-internlm2", "qwen2"]


def _read_json(directory, name):
    with open(os.path.join(directory, name)) as f:
        return json.load(f)


def _text_batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, hf_models.VOCAB, size=(2, 7)).astype(np.int32)
    mask = (np.arange(7)[None] < np.array([[7], [4]])).astype(np.int32)
    return ids * mask, mask


def _batch(is_internvl):
    if is_internvl:
        return hf_models.multimodal_batch()
    return (*_text_batch(), None)


def _logits(model, batch, mesh=None):
    ids, mask, pixels = (None if x is None else jnp.asarray(x) for x in batch)

    def forward(model, ids, mask, pixels):
        with sharding.use_mesh(mesh):
            if isinstance(model, InternVL):
                return model(ids, pixels, mask)
            return model(ids, mask)

    return np.asarray(nnx.jit(forward)(model, ids, mask, pixels))


def _build(name, tmp_path_factory):
    build, write = CASES[name]
    root = tmp_path_factory.mktemp(name)
    torch_model = build()
    hf_dir, ckpt = str(root / "hf"), str(root / "orbax")
    write(torch_model, hf_dir)
    if name == "qwen2":  # through the command line
        assert convert.main([f"--config.hf_dir={hf_dir}", f"--config.out={ckpt}", "--config.dtype=float32", "--config.progress=False"]) == 0
    else:
        checkpoint.convert_hf(hf_dir, ckpt, dtype="float32", progress=False)
    is_internvl = isinstance(torch_model, transformers.InternVLForConditionalGeneration)
    batch = _batch(is_internvl)
    expected = hf_models.torch_logits(torch_model, *batch)
    model = checkpoint.load(ckpt)
    return dict(name=name, root=root, hf_dir=hf_dir, ckpt=ckpt, torch=torch_model, batch=batch,
                expected=expected, model=model, is_internvl=is_internvl)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Builds each case once per module, whichever test asks first."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = _build(name, tmp_path_factory)
        return built[name]

    return get


@pytest.fixture(scope="module", params=list(CASES))
def case(request, cases):
    return cases(request.param)


def test_convert_then_load_matches_transformers(case):
    model = case["model"]
    assert isinstance(model, InternVL if case["is_internvl"] else CausalLM)
    if case["is_internvl"]:  # original configs do not carry it: it must come from the tokenizer files
        assert model.config.image_token_id == hf_models.IMAGE_TOKEN
    got = _logits(model, case["batch"])
    assert got.shape == case["expected"].shape
    np.testing.assert_array_less(np.abs(got - case["expected"]).max(), 1e-4)
    # Every non-weight file of the source travels with the checkpoint.
    for name in os.listdir(case["hf_dir"]):
        if not name.endswith((".safetensors", ".index.json")):
            assert os.path.exists(os.path.join(case["ckpt"], name)), name
    meta = _read_json(case["ckpt"], "sophia_checkpoint.json")
    assert meta["kind"] == ("internvl" if case["is_internvl"] else "causal_lm")
    assert meta["param_dtype"] == "float32"


def test_load_straight_from_hf_directory(case):
    direct = checkpoint.load(case["hf_dir"], dtype="float32")
    ours = checkpoint.flat_params(case["model"])
    theirs = checkpoint.flat_params(direct)
    assert sorted(ours) == sorted(theirs)
    for path, var in ours.items():
        np.testing.assert_array_equal(np.asarray(theirs[path].get_value()), np.asarray(var.get_value()), err_msg=path)


def test_export_loads_in_transformers(case):
    out = str(case["root"] / "export")
    if case["name"] == "qwen2":
        assert export.main([f"--config.checkpoint={case['ckpt']}", f"--config.out={out}", "--config.progress=False",
                            "--config.max_shard_gb=0.0002"]) == 0
        assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    else:
        checkpoint.export_hf(case["ckpt"], out, progress=False)
    names = set(index_directory(out))
    if case["is_internvl"]:
        assert all(n.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."))
                   or n == "lm_head.weight" for n in names)
        cls = transformers.InternVLForConditionalGeneration
    else:
        cls = transformers.AutoModelForCausalLM
    assert ("lm_head.weight" in names) == (case["name"] != "qwen3-tied")
    reloaded = cls.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded) is type(case["torch"])
    got = hf_models.torch_logits(reloaded, *case["batch"])
    np.testing.assert_allclose(got, case["expected"], atol=1e-5)
    if case["name"] == "original-qwen2":  # the tokenizer travels too and still knows <IMG_CONTEXT>
        tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=False)
        assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == hf_models.IMAGE_TOKEN
        assert os.path.exists(os.path.join(out, "generation_config.json"))


@pytest.mark.parametrize("name", MESH_CASES)
def test_restore_onto_mesh_is_sharded(name, cases):
    entry = cases(name)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=4))
    model = checkpoint.load(entry["ckpt"], mesh=mesh)
    lm = model.language_model if entry["is_internvl"] else model
    specs = {
        "embed": (lm.embed, P("tensor", "fsdp")),
        "gate": (lm.layers[0].mlp.gate, P("fsdp", "tensor")),
        "q": (lm.layers[0].attn.q, P("fsdp", "tensor", None)),
        "k (2 kv heads do not split over 4)": (lm.layers[1].attn.k, P("fsdp", None, None)),
    }
    if entry["is_internvl"]:
        specs["vision fc1"] = (model.vision.layers[0].fc1, P("fsdp", "tensor"))
        specs["projector fc1"] = (model.projector.fc1, P("tensor", "fsdp"))
    for what, (param, spec) in specs.items():
        value = param.get_value()
        assert value.sharding.spec == spec, what
        assert value.sharding.mesh.shape == mesh.shape
    gate = lm.layers[0].mlp.gate.get_value()
    assert gate.addressable_shards[0].data.shape == (gate.shape[0] // 2, gate.shape[1] // 4)
    got = _logits(model, entry["batch"], mesh)
    np.testing.assert_array_less(np.abs(got - entry["expected"]).max(), 1e-4)


def test_bfloat16_is_the_default_storage(cases, tmp_path):
    entry = cases("llama")
    out = checkpoint.convert_hf(entry["hf_dir"], tmp_path / "bf16", progress=False)
    assert _read_json(out, "sophia_checkpoint.json")["param_dtype"] == "bfloat16"
    assert checkpoint.load(out).embed.get_value().dtype == jnp.bfloat16
    widened = checkpoint.flat_params(checkpoint.load(out, dtype="float32"))
    for path, var in checkpoint.flat_params(entry["model"]).items():
        want = np.asarray(var.get_value()).astype(jnp.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(widened[path].get_value()), want, err_msg=path)


def test_save_and_export_a_sharded_model(cases, tmp_path):
    entry = cases("original-internlm2")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=4))
    model = checkpoint.load(entry["ckpt"], mesh=mesh)
    saved = checkpoint.save(model, tmp_path / "saved", assets=entry["ckpt"])
    assert os.path.exists(os.path.join(saved, "added_tokens.json"))
    again = checkpoint.flat_params(checkpoint.load(saved))
    for path, var in checkpoint.flat_params(model).items():
        np.testing.assert_array_equal(np.asarray(again[path].get_value()), np.asarray(var.get_value()), err_msg=path)
    out = checkpoint.export_hf(model, tmp_path / "hf", assets=saved, progress=False)
    reloaded = transformers.InternVLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_models.torch_logits(reloaded, *entry["batch"]), entry["expected"], atol=1e-5)
