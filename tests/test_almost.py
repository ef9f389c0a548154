"""ALMoST's synthetic comparisons: the exact public signature, and the rubric's invariants on random inputs."""
import inspect
import random

from selfalign.bands.almost import comparisons, rubric_ranks, synthetic_comparisons


def test_signature_is_the_one_other_code_calls():
    sig = inspect.signature(synthetic_comparisons)
    assert list(sig.parameters) == ["prompt", "responses", "rubric"]
    assert all(p.default is inspect.Parameter.empty for p in sig.parameters.values())


def test_pairs_follow_the_rubric_on_random_inputs():
    for seed in range(300): _check_random_case(random.Random(seed))


def _check_random_case(rng):
    names = [f"c{i}" for i in range(rng.randint(2, 6))]
    rubric, i = [], 0
    while i < len(names):  # some entries are ties
        k = rng.choice([1, 1, 2]); rubric.append(names[i] if k == 1 else names[i:i + k]); i += k
    responses = {n: rng.choice([None, "", " ", "x" * rng.randint(1, 120)]) for n in rng.sample(names, len(names))}
    ranks = rubric_ranks(rubric)
    for filt in (True, False):
        pairs = comparisons("Q", responses, rubric, length_filter=filt)
        chosen = [p.meta["chosen_config"] for p in pairs]
        assert len(chosen) == len(set(chosen)) and len({ranks[c] for c in chosen}) == len(chosen)  # one chosen per config and rank
        assert len(pairs) <= len(set(ranks.values())) - 1
        for p in pairs:
            c, r = p.meta["chosen_config"], p.meta["rejected_config"]
            assert ranks[c] < ranks[r] and p.chosen == responses[c] and p.rejected == responses[r] and p.chosen.strip()
    assert len(synthetic_comparisons("Q", responses, rubric)) <= len(comparisons("Q", responses, rubric, length_filter=False))
