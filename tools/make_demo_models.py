"""Makes the demo's two tiny models from nothing: the policy and the text reasoner.

    python tools/make_demo_models.py                      # writes sophia_jax/demo_models/{policy,reasoner}
    python tools/make_demo_models.py --out /tmp/m --scale 0.1   # a quick, smaller run

Everything comes from the world of ``sophia_jax.sophia.world`` (no downloads):

* the **policy**, an InternVL (InternViT -> pixel shuffle -> MLP projector -> Qwen2 decoder;
  56-pixel tiles, 4 image tokens). Its vision tower is pre-trained first on what each image
  token shows (the stand-in for InternViT's own pre-training). Then the project's own trainer
  (``sophia-jax warmup``'s config; vision frozen, projector and language model trained) warms
  it up on VQA records -- the caption prompt -> the image's canonical description, and world
  questions -> a direct ``\\boxed{n}`` answer -- and on text-only records: solutions of
  questions from a written description (in the simulate-reasoning prompt) and arithmetic
  drills, the stand-in for what a real LVLM's language model can do with text. So the base
  policy can describe images and reason over text, but answers image questions directly.
* the **reasoner**: the warmed-up policy's language model (a Qwen2 CausalLM), fine-tuned on
  solutions in its own chat format (no system turn, as ``generate`` prompts it), with the
  same train step (``training.step``) and packing as the trainer. The shared base mirrors the
  paper's pair (InternVL3-38B's language model and QwQ-32B both come from Qwen2.5-32B).

Both use the world's tokenizer. The models are stored in bfloat16. The script prints a sha256
of each model's parameter values (also written to CHECKSUMS.json); a rerun on the same machine
and software gives the same values (every seed is fixed and XLA's CPU kernels are
deterministic for a fixed build and thread count); another CPU, thread count or jax version
may round differently, and the Orbax files themselves are not byte-stable (they carry write
metadata), hence a checksum over values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

VISION_IMAGES = 4000  # images for the vision tower's pre-training
VISION_STEPS = 1200
WARMUP_IMAGES = 3000  # captioned images
DIRECT_ANSWERS = 800  # questions answered directly (short answers)
TEXT_REASONING = 3000  # text-only: (question, true description) -> solution, the language model's own skill
ARITHMETIC = 1000  # text-only arithmetic drills
POLICY_EPOCHS = 3
REASONER_EXAMPLES = 3000  # the reasoner's fine-tuning on its own chat format
LOOK_BACK_SHARE = 0.4  # solutions with a redundant look back at the image (longer)


def _config(tok):
    from sophia_jax.models import InternVLConfig, TextConfig, VisionConfig

    text = TextConfig(vocab_size=len(tok), hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=384, max_position_embeddings=2048, architecture="qwen2")
    return InternVLConfig(
        vision=VisionConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, image_size=56),
        text=text, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))


def solutions(split: str, count: int, prompts, seed: int) -> list[tuple[str, str]]:
    """(simulate-reasoning prompt with the true description, the step-by-step solution)."""
    from sophia_jax.sophia import world

    rng = np.random.default_rng(seed)
    out = []
    for q in world.split(split, count):
        caption = world.describe(q.scene)
        out.append((prompts.reasoning_prompt(q.text, caption),
                    world.solve(q, caption, look_back=bool(rng.random() < LOOK_BACK_SHARE))))
    return out


def write_policy_data(directory: str, scale: float, prompts) -> dict[str, tuple[str, int]]:
    """The warm-up sources as files: name -> (path, records)."""
    from sophia_jax.sophia import world

    scenes = world.split("warmup", max(8, int(WARMUP_IMAGES * scale)))
    images = world.write_images(directory, scenes)
    vqa = [{"id": f"caption-{q.id}", "image": images[q.id], "question": prompts.caption,
            "response": world.describe(q.scene)} for q in scenes]
    vqa += [{"id": f"direct-{q.id}", "image": images[q.id], "question": q.text,
             "response": world.direct_answer(q.answer)} for q in scenes[:max(4, int(DIRECT_ANSWERS * scale))]]
    reasoning = [{"id": f"reason-{i}", "question": q, "response": r} for i, (q, r) in
                 enumerate(solutions("warmup-text", max(8, int(TEXT_REASONING * scale)), prompts, seed=4))]
    rng = np.random.default_rng(5)
    arithmetic = [{"id": f"arith-{i}", "question": q, "response": r} for i, (q, r) in
                  enumerate(world.arithmetic(rng) for _ in range(max(4, int(ARITHMETIC * scale))))]
    return {name: (world.write_jsonl(os.path.join(directory, f"{name}.jsonl"), rows), len(rows))
            for name, rows in (("reasoning", reasoning), ("arithmetic", arithmetic), ("vqa", vqa))}


def cell_class(obj) -> int:
    """0-8: a colour x shape, 9-17: digits 1-9."""
    from sophia_jax.sophia import world

    if obj.digit:
        return 9 + obj.digit - 1
    return list(world.COLOURS).index(obj.colour) * len(world.SHAPES) + world.SHAPES.index(obj.shape)


def pretrain_vision(model, scale: float) -> None:
    """InternViT from scratch on what each of the four image tokens shows (a linear probe per token).

    The stand-in for InternViT's own pre-training: a vision tower trained jointly with a
    language model from random weights on a CPU budget collapses to near-constant features
    (measured: no caption exact after 280 warm-up steps), while a pre-trained one is read by the
    language model within a few hundred steps. Pixel shuffle (v2) orders the merged tokens
    row-major, so token i is cell i in reading order.
    """
    import optax
    from flax import nnx

    from sophia_jax.data.images import TilingConfig, tile_image
    from sophia_jax.models.internvl import pixel_shuffle
    from sophia_jax.sophia import world

    scenes = world.split("warmup", max(64, int(VISION_IMAGES * scale)))
    tiling = TilingConfig(tile_size=world.IMAGE_SIZE, max_tiles=1)
    pixels = np.concatenate([tile_image(world.draw(q.scene), tiling) for q in scenes])
    labels = np.asarray([[cell_class(o) for o in q.scene.cells] for q in scenes], np.int32)
    vision, grid = model.vision, world.IMAGE_SIZE // model.config.vision.patch_size
    probe = nnx.Linear(4 * model.config.vision.hidden_size, 18, rngs=nnx.Rngs(2))
    pair = nnx.List([vision, probe])
    optimizer = nnx.Optimizer(pair, optax.adamw(optax.cosine_decay_schedule(3e-3, VISION_STEPS), weight_decay=0.05),
                              wrt=nnx.Param)

    def loss_fn(pair, px, y):
        hidden = pair[0](px)[:, 1:].reshape(px.shape[0], grid, grid, -1)
        logits = pair[1](pixel_shuffle(hidden))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    @nnx.jit
    def step(pair, optimizer, px, y):
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(pair, px, y)
        optimizer.update(pair, grads)
        return loss, (logits.argmax(-1) == y).mean()

    rng = np.random.default_rng(3)
    for s in range(VISION_STEPS):
        batch = rng.integers(0, len(scenes), 64)
        loss, accuracy = step(pair, optimizer, pixels[batch], labels[batch])
        if (s + 1) % 200 == 0:
            print(f"vision pre-training step {s + 1}/{VISION_STEPS}: loss {float(loss):.4f}, "
                  f"cell accuracy {float(accuracy):.3f}", flush=True)


def make_policy(work: str, tok, config, scale: float) -> str:
    """Random init -> vision pre-training -> the warm-up trainer on the VQA and arithmetic records -> ``out``."""
    from flax import nnx

    from sophia_jax import checkpoint
    from sophia_jax.configs import warmup
    from sophia_jax.configs.train_data import extra_source
    from sophia_jax.models import InternVL
    from sophia_jax.sophia.prompts import Prompts
    from sophia_jax.training import trainer

    assets = os.path.join(work, "tokenizer")
    model = InternVL(config, rngs=nnx.Rngs(0))
    pretrain_vision(model, scale)
    init = checkpoint.save(model, os.path.join(work, "policy-init"), assets=assets)
    sources = write_policy_data(os.path.join(work, "policy-data"), scale, Prompts.load())
    cfg = warmup.get_config("runlocal")
    cfg.output_dir = os.path.join(work, "policy-warmup")
    cfg.model.checkpoint = init
    cfg.train.trainable = "language+projector"  # the pre-trained vision tower stays as it is
    # An epoch is one pass over the first source (text reasoning); weights make it one pass over each.
    first = sources["reasoning"][1]
    cfg.data.text_sources = [extra_source(sources[n][0], sources[n][1] / first) for n in ("reasoning", "arithmetic")]
    cfg.data.vqa_sources = [extra_source(sources["vqa"][0], sources["vqa"][1] / first)]
    cfg.data.num_epochs = POLICY_EPOCHS
    cfg.data.seq_len, cfg.data.tiles_per_row = 512, 16
    cfg.train.global_rows, cfg.train.micro_rows, cfg.train.steps = 4, 4, 0
    cfg.optimizer.peak_learning_rate = 2e-3
    cfg.checkpoint.every = 100000  # only the end
    cfg.log.tensorboard = False
    report = trainer.train(cfg)
    print(report.summary(), flush=True)
    return report.final


def _reasoner_examples(tok, scale: float, prompts) -> list:
    from sophia_jax.data import chat_templates
    from sophia_jax.data.training_examples import TokenizedExample

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    examples = []
    for i, (prompt_text, solution) in enumerate(solutions("reasoner", max(8, int(REASONER_EXAMPLES * scale)),
                                                          prompts, seed=7)):
        prompt = chat_templates.chat_prompt_ids(tok, [{"role": "user", "content": prompt_text}])
        response = tok(solution, add_special_tokens=False)["input_ids"]
        examples.append(TokenizedExample(record_id=f"reasoner-{i}", prompt_len=len(prompt), num_tiles=0, reward=1.0,
                                         input_ids=np.asarray(prompt + response + [im_end], np.int32),
                                         behaviour_seq_logprob=float("nan"), behaviour_token_logprobs=None))
    return examples


def make_reasoner(work: str, tok, warmed_policy: str, scale: float) -> str:
    """The warmed-up policy's language model, fine-tuned on solutions in its own chat format.

    Sharing the base mirrors the paper's pair (InternVL3-38B's language model and QwQ-32B both
    start from Qwen2.5-32B); the fine-tuning makes the reasoner the more reliable solver. Same
    train step (``training.step``) and packing as the trainer, text rows only.
    """
    import jax
    from flax import nnx

    from sophia_jax import checkpoint, sharding
    from sophia_jax.configs import train as train_config
    from sophia_jax.data import packing
    from sophia_jax.sophia.prompts import Prompts
    from sophia_jax.training import step as step_lib
    from sophia_jax.training.metrics import ProgressBar
    from sophia_jax.training.optimizer import OptimizerConfig, trainable_filter

    examples = _reasoner_examples(tok, scale, Prompts.load())
    rows_per_step, seq_len = 2, 512  # small batches: more steps per token for a tiny model
    order = [int(i) for i in np.random.default_rng(8).permutation(len(examples))]
    rows = packing.plan_rows([examples[i].length for i in order], [0] * len(order), seq_len, 1, 8)
    rows = [[order[k] for k in row] for row in rows]
    steps = max(1, len(rows) // rows_per_step)
    o = train_config.get_config("runlocal").optimizer
    step_config = step_lib.StepConfig(
        optimizer=OptimizerConfig(peak_learning_rate=1e-3, end_learning_rate_ratio=o.end_learning_rate_ratio,
                                  warmup_steps=int(round(o.warmup_ratio * steps)), total_steps=steps,
                                  weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                                  max_grad_norm=o.max_grad_norm),
        loss_chunk_tokens=256)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    model = checkpoint.load(warmed_policy, mesh=mesh, dtype="float32").language_model
    graphdef, params, frozen = step_lib.split_model(model, trainable_filter("all"))
    program = step_lib.TrainProgram(graphdef, params, frozen, mesh, step_config)
    state = program.init(params)
    bar = ProgressBar(steps, 0)
    for s in range(steps):
        content = [([examples[i] for i in row], [None] * len(row), [0] * len(row))
                   for row in rows[s * rows_per_step:(s + 1) * rows_per_step]]
        batch = packing.stack_rows(rows_per_step, seq_len, 1, 1, int(tok.pad_token_id), content)
        local = {k: v[None] for k, v in batch.items() if k not in ("pixel_values", "tile_mask")}  # text only
        state, metrics = program(state, frozen, program.global_batch(local, rows_per_step))
        bar.update(step_lib.host_metrics(metrics)["loss"], int(np.sum(batch["segment_ids"] > 0)))
    bar.close()
    return checkpoint.save(nnx.merge(graphdef, state.params, frozen), os.path.join(work, "reasoner-final"),
                           assets=os.path.join(work, "tokenizer"))


def _store(trained: str, out: str, assets: str) -> str:
    """The trained checkpoint, re-saved in bfloat16 (half the bytes in the repository) at ``out``."""
    from sophia_jax import checkpoint

    return checkpoint.save(checkpoint.load(trained, dtype="bfloat16"), out, assets=assets, overwrite=True)


def checksum(path: str) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes, in name order."""
    from sophia_jax import checkpoint
    from sophia_jax.checkpoint.params import flat_params

    digest = hashlib.sha256()
    for name, var in sorted(flat_params(checkpoint.load(path)).items()):
        value = np.asarray(var.get_value())
        digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def check(models: str, count: int = 100) -> dict[str, float]:
    """What the models can do on ``count`` held-out questions (printed; also the README's figures).

    caption exact (greedy / 4 samples at the paper's 1.0, top-p 0.8), direct pass@1 of the policy
    at that decoding, and solving from the true description: the policy's language model
    (greedy, its warm-up format) and the reasoner (4 samples at generate's 0.6, top-p 0.95).
    """
    import transformers

    from sophia_jax import checkpoint
    from sophia_jax.data import chat_templates
    from sophia_jax.data.images import TilingConfig, tile_image
    from sophia_jax.sampling import Prompt, Sampler, SamplerConfig, SamplingParams
    from sophia_jax.sophia import world
    from sophia_jax.sophia.prompts import Prompts
    from sophia_jax.verify import score_trajectory

    prompts, questions = Prompts.load(), world.split("heldout", count)
    config = SamplerConfig(batch_size=128, buckets=(64, 128, 256), cache_dtype="float32", tile_budget=16,
                           decode_chunk=32, kv_budget=65536, block_size=16, progress=False)

    def run(name, prompt_list, n, temperature, top_p, stop):
        path = os.path.abspath(os.path.join(models, name))  # Orbax wants absolute paths
        sampler = Sampler(checkpoint.load(path, dtype="float32"), config, tokenizer=tok)
        params = SamplingParams(max_new_tokens=192, temperature=temperature, top_p=top_p, n=n, stop_token_ids=stop)
        return [(questions[r.index], s.text) for r in sampler.generate(prompt_list, params) for s in r.samples]

    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(models, "policy"))
    stop = chat_templates.internvl_stop_token_ids(tok)
    tiles = [tile_image(world.draw(q.scene), TilingConfig(tile_size=world.IMAGE_SIZE, max_tiles=12)) for q in questions]

    def image_prompt(text, t):
        return Prompt(tokens=chat_templates.internvl_prompt_ids(tok, text, num_tiles=[1], tokens_per_tile=4,
                                                                system_message=prompts.default_system), pixel_values=t)

    def solved(pairs):
        return float(np.mean([score_trajectory(str(q.answer), text).reward for q, text in pairs]))

    def exact(pairs):
        return float(np.mean([text.strip() == world.describe(q.scene) for q, text in pairs]))

    captions = [image_prompt(prompts.caption, t) for t in tiles]
    direct = [image_prompt(q.text, t) for q, t in zip(questions, tiles)]
    text = [Prompt(tokens=chat_templates.internvl_prompt_ids(
        tok, prompts.reasoning_prompt(q.text, world.describe(q.scene)), system_message=prompts.default_system))
        for q in questions]
    reasoner = [Prompt(tokens=chat_templates.chat_prompt_ids(
        tok, [{"role": "user", "content": prompts.reasoning_prompt(q.text, world.describe(q.scene))}]))
        for q in questions]
    out = {
        "caption_exact_greedy": exact(run("policy", captions, 1, 0.0, 1.0, stop)),
        "caption_exact_sampled": exact(run("policy", captions, 4, 1.0, 0.8, stop)),
        "direct_pass_at_1": solved(run("policy", direct, 4, 1.0, 0.8, stop)),
        "policy_text_solving_greedy": solved(run("policy", text, 1, 0.0, 1.0, stop)),
        "reasoner_solving_sampled": solved(run("reasoner", reasoner, 4, 0.6, 0.95,
                                               chat_templates.stop_token_ids(tok))),
    }
    for name, value in out.items():
        print(f"{name}: {100 * value:.1f}% ({count} held-out questions)")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out", default=os.path.join(here, "sophia_jax", "demo_models"))
    parser.add_argument("--scale", type=float, default=1.0, help="data size factor (1 = the shipped models)")
    parser.add_argument("--check", action="store_true", help="only measure the models in --out")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from sophia_jax.sophia import world

    if args.check:
        check(args.out)
        return 0
    start = time.perf_counter()
    tok = world.tokenizer()
    os.makedirs(args.out, exist_ok=True)
    made = {}
    with tempfile.TemporaryDirectory(prefix="demo-models-") as work:
        assets = os.path.join(work, "tokenizer")
        tok.save_pretrained(assets)
        warmed = make_policy(work, tok, _config(tok), args.scale)
        made["policy"] = _store(warmed, os.path.join(args.out, "policy"), assets)
        print(f"policy done at {time.perf_counter() - start:.0f}s", flush=True)
        made["reasoner"] = _store(make_reasoner(work, tok, warmed, args.scale), os.path.join(args.out, "reasoner"),
                                  assets)
        print(f"reasoner done at {time.perf_counter() - start:.0f}s", flush=True)
    sums = {name: checksum(path) for name, path in made.items()}
    with open(os.path.join(args.out, "CHECKSUMS.json"), "w") as f:
        json.dump(sums, f, indent=1, sort_keys=True)
    for name, value in sums.items():
        print(f"{name}: sha256 of parameter values {value}")
    print(f"total {time.perf_counter() - start:.0f}s; models in {args.out}")
    check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
