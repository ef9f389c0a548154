"""Our DPO loss (selfalign.objectives.logps + selfalign.objectives.losses) equals TRL 1.16 DPOTrainer's on the same batch."""
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from selfalign.objectives.logps import sequence_logps, concatenated_forward
from selfalign.objectives.losses import dpo_loss
from selfalign.models.loader import tiny_causal_lm

PAIRS = [
    ("What is 2+3?", " 5.", " I will not say."),
    ("Name the capital of France.", " Paris.", " As an AI language model, I cannot know."),
    ("Spell cat backwards.", " tac", " The answer is dog, which is a fine animal."),
    ("Convert 2 km to metres.", " 2000 metres.", " Twenty."),
]


def _trainer(tmp, noise):
    from trl import DPOConfig, DPOTrainer
    model, tok = tiny_causal_lm(seed=0)
    model.save_pretrained(tmp / "sft")
    tok.save_pretrained(tmp / "sft")
    ref = AutoModelForCausalLM.from_pretrained(tmp / "sft")
    policy = AutoModelForCausalLM.from_pretrained(tmp / "sft")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference so the loss is not trivially ln 2
        for p in policy.parameters(): p.add_(noise * torch.randn(p.shape, generator=g))
    ds = Dataset.from_dict({"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
                            "rejected": [r for _, _, r in PAIRS]})
    args = DPOConfig(output_dir=str(tmp / "out"), beta=0.3, per_device_train_batch_size=4, bf16=False,
                     gradient_checkpointing=False, report_to=[], max_length=128, use_cpu=True,
                     precompute_ref_log_probs=False, loss_type=["sigmoid"], disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    return trainer, policy, ref, batch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return _trainer(tmp_path_factory.mktemp("parity"), noise=0.05)


def test_dpo_loss_matches_trl(setup):
    trainer, policy, ref, batch = setup
    policy.train()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        ids, att, resp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        lp_pi = sequence_logps(policy(input_ids=ids, attention_mask=att).logits, ids, resp)
        lp_ref = sequence_logps(ref(input_ids=ids, attention_mask=att).logits, ids, resp)
    B = len(PAIRS)
    ours, _, _ = dpo_loss(lp_pi[:B], lp_pi[B:], lp_ref[:B], lp_ref[B:], beta=0.3)
    print(f"TRL {trl_loss:.8f}  ours {ours.mean().item():.8f}  |diff| {abs(trl_loss - ours.mean().item()):.2e}")
    assert abs(trl_loss - math.log(2)) > 1e-3  # the comparison is not the trivial ln 2
    assert abs(trl_loss - ours.mean().item()) < 1e-5


def test_reference_equals_policy_gives_ln2_in_both(tmp_path):
    trainer, policy, ref, batch = _trainer(tmp_path, noise=0.0)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        ids, att, resp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        lp = sequence_logps(policy(input_ids=ids, attention_mask=att).logits, ids, resp)
    B = len(PAIRS)
    ours = dpo_loss(lp[:B], lp[B:], lp[:B], lp[B:])[0].mean().item()
    assert abs(loss - math.log(2)) < 1e-6 and abs(ours - math.log(2)) < 1e-6


def test_concatenated_forward_matches_trl_logps(setup):
    trainer, policy, ref, batch = setup
    B = len(PAIRS)
    side = lambda sl: {"input_ids": batch["input_ids"][sl], "attention_mask": batch["attention_mask"][sl],
                       "response_mask": batch["completion_mask"][sl]}
    with torch.no_grad():
        c, r = concatenated_forward(policy, side(slice(0, B)), side(slice(B, None)))
        rc, rr = trainer.compute_ref_log_probs(policy, dict(batch))
    torch.testing.assert_close(c, rc, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r, rr, atol=1e-4, rtol=1e-5)
