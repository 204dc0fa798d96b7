"""The eval core on a tiny InternVL: multi-image prompts under a shared tile budget, per-item sampling keys,
answer-type judging through the verifier pool, and pass@k."""

import itertools
import random

import numpy as np
import pytest
from PIL import Image

import layouts
from sophia_jax.configs.loading import load
from sophia_jax.data import chat_templates
from sophia_jax.data.datasets import ImageRef
from sophia_jax.data.images import TileBudgetError, TilingConfig, shared_budget, tile_image
from sophia_jax.evaluation import EvalItem, EvalSettings, evaluate, pass_at_k
from sophia_jax.evaluation.core import ItemSkip, build_prompt
from sophia_jax.sampling import Prompt, SamplingParams
from sophia_jax.sampling.load import load_sampler
from sophia_jax.sophia import toy
from sophia_jax.verify import EVAL_SCORER, VerifierPool, score_answer


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = toy.write_policy(str(tmp_path_factory.mktemp("policy") / "policy"), words=layouts.POLICY_WORDS)
    return load_sampler(path, load("eval:runlocal").sampler, dtype="float32", mesh=None)


@pytest.fixture(scope="module")
def verifier():
    with VerifierPool(num_workers=1, scorer=EVAL_SCORER) as pool:
        yield pool


def item(i, n_images=1, sizes=((120, 60),), **kw):
    images = tuple(ImageRef(data=layouts.png(*sizes[k % len(sizes)], seed=10 * i + k), origin=f"t{i}")
                   for k in range(n_images))
    base = dict(id=f"q{i}", benchmark="test", question=f"question {i} ?", answer="3", answer_type="free",
                images=images)
    return EvalItem(**{**base, **kw})


def test_shared_budget_is_the_largest_cap_that_fits():
    config = TilingConfig(tile_size=56, max_tiles=12)
    for n, total in itertools.product(range(1, 9), (8, 16, 64)):
        if n > total:
            with pytest.raises(TileBudgetError):
                shared_budget(config, n, total)
            continue
        cap = shared_budget(config, n, total).max_tiles
        worst = lambda c: n * (c + (1 if c > 1 else 0))  # noqa: E731 - grid + thumbnail when there is a grid
        assert cap >= 1 and (worst(cap) <= total or cap == 1)
        assert cap == 12 or worst(cap + 1) > total


def test_multi_image_prompt_numbers_the_images_and_shares_the_budget(policy):
    sizes = ((120, 60), (60, 120), (200, 70))
    three = item(1, n_images=3, sizes=sizes, question="Compare <Image-1>, <Image-2> and <Image-3>.")
    settings = EvalSettings(total_tiles=8, system_prompt="")
    text, prompt = build_prompt(three, policy, settings, policy.sampler.config.buckets)
    assert text.startswith("Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nCompare <Image-1>")

    cap = shared_budget(TilingConfig(tile_size=56, max_tiles=12), 3, 8)  # 3 images x (1 tile) -> cap 1
    expected = [tile_image(Image.open(__import__("io").BytesIO(ref.data)), cap) for ref in three.images]
    np.testing.assert_array_equal(prompt.pixel_values, np.concatenate(expected))
    assert prompt.num_tiles <= 8

    tok = policy.tokenizer
    rendered = tok.decode(prompt.tokens)
    assert rendered.count("<img>") == 3 and rendered.index("Image-1") < rendered.index("<img>")
    context = tok.convert_tokens_to_ids(chat_templates.IMG_CONTEXT)
    blocks = [len(b) for b in "".join("c" if t == context else " " for t in prompt.tokens).split()]
    assert blocks == [policy.model.config.tokens_per_tile * len(t) for t in expected]

    roomy = build_prompt(three, policy, EvalSettings(total_tiles=16, system_prompt=""), (4096,))[1]
    assert 8 < roomy.num_tiles <= 16  # a larger budget buys more tiles per image


def test_item_keys_make_samples_independent_of_the_call(policy):
    prompts = [Prompt(tokens=chat_templates.internvl_prompt_ids(policy.tokenizer, f"q {i}"), key=1000 + i)
               for i in range(3)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=5)
    def tokens(prompt_list):
        return [[s.tokens.tolist() for s in g.samples] for g in policy.sampler.generate(prompt_list, params)]

    together = tokens(prompts)
    assert tokens([prompts[1]]) == together[1:2] and tokens(prompts[::-1]) == together[::-1]
    # Without a key the position picks the keys: the same prompt alone samples something else.
    assert tokens([Prompt(tokens=prompts[1].tokens)]) != together[1:2]


def test_evaluate_judges_by_answer_type_like_the_in_process_judge(policy, verifier):
    items = [item(0, answer="3", answer_type="integer"), item(1, answer="B", answer_type="choice",
                                                                 choices=("3", "4", "5")),
             item(2, n_images=2, answer="4"),
             EvalItem(id="broken", benchmark="test", question="?", answer="1", answer_type="free",
                      images=(ImageRef(data=b"\x89PNG\r\n\x1a\n nope", origin="t"),))]
    out = evaluate(policy, items, EvalSettings(k=3, max_new_tokens=8, chunk=2), verifier=verifier)
    assert [r.id for r in out] == ["q0", "q1", "broken", "q2"]  # chunks in order; a skip keeps its place in its chunk
    (skip,) = [r for r in out if isinstance(r, ItemSkip)]
    assert skip.reason == "bad_image" and "not a recognised image" in skip.message
    for result, it in zip([r for r in out if not isinstance(r, ItemSkip)], [items[0], items[1], items[2]]):
        assert len(result.samples) == 3 and result.gold == it.answer
        for s in result.samples:
            ref = score_answer(it.answer, s.output, it.choices, answer_type=it.answer_type)
            assert (s.correct, s.extracted, s.reason) == (ref.reward >= 1, ref.extracted, ref.reason)


def test_pool_scores_typed_answers_per_item(verifier):
    cases = [("14", "so \\boxed{14.0}", None, {"answer_type": "integer"}, True),
             ("14", "so \\boxed{14.5}", None, {"answer_type": "integer"}, False),
             ("0.6", "\\boxed{0.64}", None, {"answer_type": "float", "precision": 1}, True),
             ("0.6", "\\boxed{0.66}", None, {"answer_type": "float", "precision": 1}, False),
             ("[2007, 2008]", "\\boxed{[2007, 2008]}", None, {"answer_type": "list"}, True),
             ("B", "The answer is (B).", ["x", "y"], {"answer_type": "choice"}, True),
             ("B", "\\boxed{y}", ["x", "y"], {"answer_type": "choice"}, True),
             ("A", "\\boxed{y}", ["x", "y"], {"answer_type": "choice"}, False),
             ("1.5", "\\boxed{3/2}", None, {"answer_type": "free", "alternatives": ["x"]}, True),
             ("19.6", "\\boxed{19.55}", None, {"answer_type": "free", "tolerance": 0.1}, True),
             ("19.6", "\\boxed{19.4}", None, {"answer_type": "free", "tolerance": 0.1}, False),
             ("C", "irrelevant", None, {"answer_type": "choice", "extracted": "C"}, True),
             ("C", "C", None, {"answer_type": "ranking"}, False)]
    rewards = verifier.score([{"gold": g, "text": t, "choices": c, "options": o} for g, t, c, o, _ in cases])
    assert [r.reward >= 1 for r in rewards] == [want for *_, want in cases]
    assert rewards[-1].reason == "unknown answer type 'ranking'"
    with VerifierPool(num_workers=1) as rewards_pool, pytest.raises(ValueError, match="EVAL_SCORER"):
        evaluate(None, [], verifier=rewards_pool)


def test_pass_at_k_matches_enumeration():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 7)
        c, k = rng.randint(0, n), rng.randint(1, n)
        draws = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws))
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_model_judge_reads_every_answer_and_judges_only_its_benchmarks(policy, verifier):
    from sophia_jax.evaluation.model_judge import ModelJudge, extraction_prompt, judgement_prompt, parse_judgement

    mv = item(0, benchmark="mv_math", answer="4", question="What is 2 + 2 ?")
    vista = item(1, benchmark="mathvista", answer="B", answer_type="choice", choices=("3", "4"), hint="Pick one.")
    prompt = extraction_prompt(vista, "x" * 50 + " so the answer is (B)", response_chars=20)
    assert prompt.endswith("Hint: Pick one.\nQuestion: question 1 ?\nChoices: (A) 3 (B) 4\n"
                           "Model response: ...so the answer is (B)\nExtracted answer:")
    assert judgement_prompt(mv, "four").endswith("Standard answer: 4\nModel answer: four\nJudgement:")
    assert [parse_judgement(t) for t in ("Judgement: 1", "0", "1.5 or 10", "it is 0. no, 1")] == [True, False, None, True]

    judge = ModelJudge(policy, judge_benchmarks=["mv_math"], max_new_tokens=4)
    out = evaluate(policy, [mv, vista], EvalSettings(k=2, max_new_tokens=6), verifier=verifier, judge=judge)
    samples = [s for r in out for s in r.samples]
    extracted = judge.extract([(it, s.output) for it, s in zip([mv, mv, vista, vista], samples)])
    for it, s, e in zip([mv, mv, vista, vista], samples, extracted):  # the model's reading, else the rules'
        assert s.extracted == (e or score_answer(it.answer, s.output, it.choices, answer_type=it.answer_type).extracted)
    # mv_math verdicts are the model's wherever there is an answer to judge; mathvista's stay the rules'.
    assert [s.reason.split(":")[0] for s in out[0].samples] == ["model judge" if s.extracted else "no answer found"
                                                                for s in out[0].samples]
    assert any(s.extracted for s in out[0].samples), "the judge model should write something to judge"
    assert all(not s.reason.startswith("model judge") for s in out[1].samples)
