"""The miniature world's oracle and corpora, tested through the exported module."""
import random
import string

import pytest

from selfalign.world import base as W


def test_every_world_prompt_is_recovered_from_its_text():
    for split in ("train", "test"):
        for p in W.world_prompts(3000, split, seed=3):
            assert W.parse_prompt(p.text) == p


def test_splits_hold_out_combinations_but_every_phrasing_and_frame_is_seen_in_training():
    train = {p.text for p in W.world_prompts(5000, "train")}
    test = {p.text for p in W.world_prompts(5000, "test")}
    assert not train & test
    def parts(texts):
        frames = {next((f for f in W.FRAMES if f and t.startswith(f)), "") for t in texts}
        phrasings = {next(i for i, (_, pat) in enumerate(W._PATTERNS) if pat.match(W._unframe(t))) for t in texts}
        return frames, phrasings
    (f_train, ph_train), (f_test, ph_test) = parts(train), parts(test)
    assert f_train == f_test == set(W.FRAMES)
    assert ph_train == ph_test == set(range(len(W._PATTERNS)))  # every phrasing in both splits, in different frames
    with pytest.raises(ValueError, match="split"):
        W.world_prompts(3, "dev")


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a"]])
def test_non_string_input_is_refused_clearly(bad):
    with pytest.raises(TypeError, match="two strings"):
        W.judge("What is 2 plus one?", bad)
    with pytest.raises(TypeError, match="two strings"):
        W.judge(bad, "Five.")


@pytest.mark.parametrize("text, reason", [("", "empty"), ("   \n", "empty"), ("2 plus one is 3" * 2000, "too long"),
                                          ("The answer is", "unfinished"), ("USER: again?", "off-format"),
                                          ("blorp zindle quax frob.", "non-words"), ("It is is is 5.", "loop")])
def test_malformed_text_scores_zero_everywhere(text, reason):
    j = W.judge("What is 2 plus one?", text)
    assert j.flags["malformed"] == reason
    assert j.reward == -3.0 and set(j.aspects.values()) == {0.0}


def test_random_text_is_garbage_not_harmless():
    rng = random.Random(0)
    prompts = W.world_prompts(300, "test")
    junk = ["".join(rng.choice(string.ascii_lowercase + "  .") for _ in range(rng.randint(5, 80))) for _ in prompts]
    js = [W.judge(p.text, t) for p, t in zip(prompts, junk)]
    assert sum(j.aspects["harmless"] for j in js) / len(js) < 0.05
    assert sum(j.reward for j in js) / len(js) < -2.5


def test_unicode_and_control_characters_do_not_crash():
    for t in ["Ünïcödé answer.", "\x00\x01 tab\tnew\nline.", "😀 is 5.", "The capital is Paris\u200b."]:
        j = W.judge("What is the capital of France?", t)
        assert -3.0 <= j.reward <= 1.0


def test_behaviours_rank_as_a_careful_labeller_would():
    rng = random.Random(1)
    for kind, order in (("harmful", ["refuse_explain", "refuse_bare", "evasive", "comply"]),
                        ("benign", ["correct", "evasive", "wrong"]), ("borderline", ["correct", "over_refusal", "wrong"])):
        ps = W.world_prompts(200, kinds=[kind], seed=2)
        mean = {b: sum(W.judge(p.text, W.render_response(p, b, rng)).reward for p in ps) / len(ps) for b in order}
        assert [mean[b] for b in order] == sorted(mean.values(), reverse=True), (kind, mean)


def test_harm_is_read_from_content_not_from_an_opening_keyword():
    p = W.world_prompts(1, kinds=["harmful"], seed=7)[0]
    rng = random.Random(0)
    partial = W.render_response(p, "comply_partial", rng)  # opens like a refusal
    assert partial.lower().startswith(("i ", "sorry")) and W.judge(p.text, partial).aspects["harmless"] == 0.0
    refusal = "Sure, I understand why you ask. I can't help with that because it is against the law."
    assert W.judge(p.text, refusal).aspects["harmless"] == 1.0


def test_over_refusal_of_borderline_requests_is_unhelpful_but_harmless():
    p = W.world_prompts(1, kinds=["borderline"], seed=1)[0]
    j = W.judge(p.text, W.render_response(p, "over_refusal", random.Random(0)))
    assert j.aspects["harmless"] == 1.0 and j.aspects["helpful"] == 0.0 and j.reward < 0


def test_prefer_overall_and_by_principle():
    p = W.world_prompts(1, kinds=["benign"], seed=4)[0]
    rng = random.Random(0)
    ok, wrong, rude = (W.render_response(p, b, rng) for b in ("correct", "wrong", "rude"))
    assert W.prefer(p.text, ok, wrong) == 1 and W.prefer(p.text, wrong, ok) == -1
    assert W.prefer(p.text, ok, ok) == 0
    assert W.prefer(p.text, ok, rude, principle="polite") == 1
    assert W.prefer(p.text, rude, wrong, principle="honest") == 1


def test_ten_principles_each_with_a_negation_and_an_aspect():
    assert len(W.PRINCIPLES) == 10
    for name, pr in W.PRINCIPLES.items():
        assert pr.text and pr.negated and pr.text != pr.negated and name in W.ASPECTS


def test_corpora_are_deterministic_and_free_of_test_requests():
    assert W.base_corpus(100, seed=5) == W.base_corpus(100, seed=5)
    docs = W.base_corpus(3000)
    test_texts = {p.text for p in W.world_prompts(3000, "test")}
    users = {line[6:] for d in docs for line in d.split("\n") if line.startswith("USER: ")}
    assert not users & test_texts
    kinds = {"judging": sum("VERDICT:" in d for d in docs), "affix": sum("ASSISTANT (" in d for d in docs)}
    assert 0.15 < kinds["judging"] / len(docs) < 0.25 and 0.35 < kinds["affix"] / len(docs) < 0.45


def test_sft_data_has_no_harmful_requests_and_mostly_good_answers():
    everything = W.sft_examples(1000)
    replay = [e for e in everything if e.meta.get("replay")]
    judging = [e for e in everything if "judging" in e.meta]
    assert len(judging) == 150 and all(e.prompt.endswith("VERDICT:") and e.response in (" (a)", " (b)") for e in judging)
    per = {k: sum(e.meta["judging"] == k for e in judging) for k in W.JUDGEABLE}
    assert min(per.values()) >= 8 and sum(per.values()) == 75  # half balanced over the principles, half as in pretraining
    assert len(replay) == 200 and not any(e.prompt.count("USER: ") == 1 and e.prompt.endswith("\nASSISTANT:")
                                          and e.prompt.startswith("USER: ") for e in replay)  # only docs with a context
    ex = [e for e in everything if "kind" in e.meta]
    assert len(ex) == 650
    assert {e.meta["kind"] for e in ex} == {"benign", "borderline"}
    helpful = sum(W.judge(e.prompt, e.response).aspects["helpful"] for e in ex) / len(ex)
    assert 0.7 < helpful < 0.95
