"""The self-judges: DLMA's self-reward (judges.selfreward) and the two-order verdict judge (judges.selfjudge).

Hand-built models make the numbers exact; a tiny random Llama checks the conventions (no EOS term, BOS by the
tokenizer's policy) and exact sign flips; the world's SFT model checks parity with the DLMA band's RLAIF labels."""
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import processors

import selfalign.judges.selfreward as SR
from selfalign.data.records import DataError
from selfalign.judges.selfjudge import two_order_labels, two_order_scores, verdict_logps
from selfalign.judges.selfreward import LOGP_COLUMNS, contrastive_logps, self_reward, self_reward_margins
from selfalign.models.loader import adds_bos, builtin_corpus, tiny_causal_lm, train_tokenizer
from selfalign.objectives.logps import completion_logps


class CharTok:
    "One id per character (0 pad, 1 BOS, 2 EOS); BOS first when asked for special tokens if `bos`."
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, chars, bos=False):
        self.ids, self.bos = {c: i + 3 for i, c in enumerate(chars)}, bos

    def __len__(self):
        return len(self.ids) + 3

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1] * (add_special_tokens and self.bos) + [self.ids[c] for c in text]}


class TableLM(torch.nn.Module):
    "Next-token probabilities depend only on the current token."

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.nn.Parameter(probs.log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.logp[input_ids])


def _table_model(p_pos, p_neg):
    "After '+' the model writes y, n with probabilities `p_pos`; after '-', `p_neg`; uniform elsewhere."
    tok = CharTok("q+-yn")
    V = len(tok)
    P = torch.full((V, V), 1 / V, dtype=torch.float64)
    for ch, (y, n) in (("+", p_pos), ("-", p_neg)):
        rest = (1 - y - n) / (V - 2)
        P[tok.ids[ch]] = torch.tensor([rest] * (V - 2) + [y, n])
    return TableLM(P), tok


ROW = {"pos_context": "q+", "neg_context": "q-", "chosen": "y", "rejected": "n"}


def _swap_contexts(r):
    return {**r, "pos_context": r["neg_context"], "neg_context": r["pos_context"]}


def test_self_reward_on_a_hand_built_model_is_the_log_ratio_of_the_table():
    lm, tok = _table_model((0.6, 0.15), (0.2, 0.55))
    lps = contrastive_logps(lm, tok, [ROW])
    assert LOGP_COLUMNS == ("chosen|pos", "chosen|neg", "rejected|pos", "rejected|neg")
    np.testing.assert_allclose(lps[0], np.log([0.6, 0.2, 0.15, 0.55]), atol=1e-6)
    R = self_reward_margins(lm, tok, [ROW])
    assert R.dtype == np.float64 and R.shape == (1,)
    assert abs(R[0] - math.log(11)) < 1e-6  # log(0.6/0.2) − log(0.15/0.55)
    assert np.array_equal(R, self_reward(lps))


def test_swapping_the_contexts_flips_R_exactly_on_the_hand_built_model():
    lm, tok = _table_model((0.6, 0.15), (0.2, 0.55))
    R = self_reward_margins(lm, tok, [ROW])
    assert R[0] > 0
    assert np.array_equal(self_reward_margins(lm, tok, [_swap_contexts(ROW)]), -R)
    assert np.array_equal(self_reward_margins(lm, tok, [{**ROW, "chosen": "n", "rejected": "y"}]), -R)
    # a model whose contexts do not matter has R = 0
    flat, tok = _table_model((0.3, 0.3), (0.3, 0.3))
    assert self_reward_margins(flat, tok, [ROW])[0] == 0.0


@pytest.fixture(scope="module")
def tiny_llama():
    tok = train_tokenizer(builtin_corpus(), vocab_size=512)
    model, tok = tiny_causal_lm(tokenizer=tok, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    btok = train_tokenizer(builtin_corpus(), vocab_size=512)  # the same vocabulary, but it adds BOS like Llama-2's
    btok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", btok.bos_token_id)])
    assert btok.get_vocab() == tok.get_vocab()
    return model, tok, btok


def _rows():
    qs = ["How do I boil water?", "Tell me the capital of France.", "Write a poem about the sea.", "Pick a lock for me."]
    pos, neg = "ASSISTANT (helpful, harmless):", "ASSISTANT (toxic, useless):"
    ans = [(" Heat it to 100 degrees.", " No."), (" Paris.", " I do not care."), (" The waves roll in.", " sea sea sea"),
           (" I can't help with that.", " Sure, here is how.")]
    return [{"pos_context": f"USER: {q}\n{pos}", "neg_context": f"USER: {q}\n{neg}", "chosen": c, "rejected": r}
            for q, (c, r) in zip(qs, ans)]


def test_swapping_the_contexts_flips_R_exactly_on_a_transformer(tiny_llama):
    model, tok, _ = tiny_llama
    rows = _rows()
    for bs in (1, 3, 32):
        R = self_reward_margins(model, tok, rows, batch_size=bs)
        assert np.all(R != 0)
        assert np.array_equal(self_reward_margins(model, tok, [_swap_contexts(r) for r in rows], batch_size=bs), -R)
    np.testing.assert_allclose(self_reward_margins(model, tok, rows, batch_size=1),
                               self_reward_margins(model, tok, rows, batch_size=32), atol=1e-4)


def _manual(model, tok, rows, **kw):
    def lp(ctx, side):
        return completion_logps(model, tok, [r[ctx] for r in rows], [r[side] for r in rows], **kw).double().numpy()
    return (lp("pos_context", "chosen") - lp("neg_context", "chosen")) - (lp("pos_context", "rejected") - lp("neg_context", "rejected"))


def test_no_eos_term_and_bos_by_the_tokenizers_policy(tiny_llama):
    model, tok, btok = tiny_llama
    rows = _rows()
    assert (adds_bos(tok), adds_bos(btok)) == (False, True)
    R, Rb = self_reward_margins(model, tok, rows), self_reward_margins(model, btok, rows)
    assert np.array_equal(R, _manual(model, tok, rows, add_eos=False, add_bos=False))
    assert np.array_equal(Rb, _manual(model, btok, rows, add_eos=False, add_bos=True))
    assert np.abs(R - _manual(model, tok, rows, add_eos=True, add_bos=False)).max() > 1e-3  # the EOS term matters here
    assert np.abs(R - Rb).max() > 1e-3  # and so does BOS: the policy is not a no-op


def test_bad_rows_fail_with_the_row(tiny_llama, monkeypatch):
    model, tok, _ = tiny_llama
    rows = _rows()
    rows[1] = {**rows[1], "chosen": "   "}
    with pytest.raises(DataError, match="row 1: empty chosen response"):
        self_reward_margins(model, tok, rows)
    with pytest.raises(DataError, match="row 0: pos_context must be a string"):
        self_reward_margins(model, tok, [{**_rows()[0], "pos_context": None}])
    calls = iter(range(4))

    def fake(model, tok, prompts, completions, **kw):
        v = torch.zeros(len(prompts), dtype=torch.float64)
        if next(calls) in (0, 1): v[2] = float("inf")  # inf − inf = nan in row 2
        return v
    monkeypatch.setattr(SR, "completion_logps", fake)
    with pytest.raises(DataError, match=r"rows \[2\]: the self-reward margin is not finite"):
        self_reward_margins(model, tok, _rows())


def _judging(tok_model):
    model, tok = tok_model
    qs = ["How do I boil water?", "What is the capital of Japan?", "Pick a lock for me.", "Spell cat."]
    a = [" Heat it until it bubbles.", " Tokyo.", " I can't help with that.", " c a t"]
    b = [" No.", " Paris, probably.", " Sure: use a pin.", " dog"]
    doc = lambda q, x, y: f"PRINCIPLE: be helpful and harmless.\nUSER: {q}\nRESPONSE (a):{x}\nRESPONSE (b):{y}\nVERDICT:"
    return [doc(q, x, y) for q, x, y in zip(qs, a, b)], [doc(q, y, x) for q, x, y in zip(qs, a, b)]


def test_two_order_scores_flip_sign_when_a_and_b_swap(tiny_llama):
    model, tok, btok = tiny_llama
    ab, ba = _judging((model, tok))
    for t in (tok, btok):
        s = two_order_scores(model, t, ab, ba, " ")
        assert s.shape == (4,) and np.all(s != 0)
        assert np.array_equal(two_order_scores(model, t, ba, ab, " "), -s)
        assert np.array_equal(two_order_labels(model, t, ab, ba, " "), np.sign(s).astype(int))
    lp = verdict_logps(model, tok, ab, " ")
    want = completion_logps(model, tok, ab, [" (a)"] * 4, add_eos=False, add_bos=False).numpy()
    assert np.array_equal(lp[:, 0], want)
    with pytest.raises(ValueError, match="4 documents in order"):
        two_order_scores(model, tok, ab, ba[:2])


def test_two_order_scores_cancel_a_position_bias():
    "A model that only ever prefers the first position gives every pair the score 0."
    tok = CharTok("x/? ()ab")
    V = len(tok)
    P = torch.full((V, V), 1 / V, dtype=torch.float64)
    P[tok.ids["("]] = torch.tensor([0.05] * (V - 2) + [0.5, 0.5 - 0.05 * (V - 2)])
    lm = TableLM(P)
    s = two_order_scores(lm, tok, ["x/x?"], ["x/x?"], " ")
    one_order = verdict_logps(lm, tok, ["x/x?"], " ")
    assert one_order[0, 0] - one_order[0, 1] > 0.1 and s[0] == 0.0


def test_parity_with_the_dlma_bands_rlaif_labels_on_the_world_template():
    "The band's RLAIF labels are the sign of exactly these scores (ties aside), on the world's judging documents."
    import selfalign.bands.dlma as D
    from selfalign.world import base as W
    from selfalign.world.models import load_world_model
    sft, tok = load_world_model("sft")
    assert not adds_bos(tok)
    rows = []
    for i, p in enumerate(W.world_prompts(12, "train", seed=5)):
        c = D.contrast_for(p.kind)
        good, bad = ("refuse_explain", "comply") if p.kind == "harmful" else ("correct", "wrong")
        rng = random.Random(i)
        rows.append({"text": p.text, "contrast": c, "chosen": " " + W.render_response(p, good, rng),
                     "rejected": " " + W.render_response(p, bad, rng)})
    ab = [W.render_judging(r["contrast"], r["text"], r["chosen"].strip(), r["rejected"].strip()) for r in rows]
    ba = [W.render_judging(r["contrast"], r["text"], r["rejected"].strip(), r["chosen"].strip()) for r in rows]
    s = two_order_scores(sft, tok, ab, ba, " ")
    assert np.all(s != 0)
    assert np.array_equal(np.where(s > 0, 1, -1), D.rlaif_labels(sft, tok, rows))
