"""selfalign.world.models: digit tokens, packing, SFT masks, reproducible training, and the world build (cache,
loading, the reproducibility check, interrupted builds) on a toy budget."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from selfalign.world import models as wm
from selfalign.cli import main
from selfalign.core.base import current_umask
from selfalign.data.records import SFTExample
from selfalign.models.loader import model_fingerprint, tiny_causal_lm, train_tokenizer
from selfalign.world.models import (ModelShape, TrainConfig, WorldBuildConfig, build_world, check_reproducible,
                                   collate_sft, encode_sft, load_world_model, pack_documents, pretrain, sft_train)

TEXTS = [f"USER: What is {a} plus {b}?\nASSISTANT: {a} plus {b} is {a + b}." for a in range(40) for b in range(0, 40, 3)]
SFT = [SFTExample(prompt=f"USER: What is {a} plus {b}?\nASSISTANT:", response=f" {a + b}.") for a in range(30) for b in range(30)]
PRE = TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5, max_steps=40, batch_size=8, seq_len=64, log_every=10)
TUNE = TrainConfig(lr=2e-3, min_lr=2e-4, warmup_steps=3, max_steps=20, batch_size=16, seq_len=64, weight_decay=0.0,
                   log_every=10)
TOY_SHAPE = ModelShape(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=128)
TOY_TRAIN = TrainConfig(max_steps=25, warmup_steps=5, batch_size=4, seq_len=64, log_every=5)
TOY = WorldBuildConfig(n_docs=200, vocab_size=400, small=TOY_SHAPE, large=TOY_SHAPE.replace(hidden_size=48),
                       pretrain_small=TOY_TRAIN, pretrain_large=TOY_TRAIN, n_sft=64, sft=TOY_TRAIN.replace(lr=3e-4))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400, individual_digits=True)


def _model(tok, seed=0):
    return tiny_causal_lm(tokenizer=tok, hidden_size=64, num_layers=2, num_heads=2, seed=seed)[0]


def test_digits_are_single_tokens(tok):
    assert len(tok("12345")["input_ids"]) == 5
    assert tok.convert_ids_to_tokens(tok("is 2024.")["input_ids"])[-5:] == ["2", "0", "2", "4", "."]
    for s in ["3.14 + 2,000 = 2003.14", " 007\n\t0", "naïve 😀 ٣٤ ５６ x9y", "USER: What is 12 plus 30?\nASSISTANT:"]:
        assert tok.decode(tok(s)["input_ids"]) == s
    plain = train_tokenizer(["12345 67890 12345"] * 50)
    assert len(plain("12345")["input_ids"]) < 5  # without the option, frequent numbers merge


def test_packing_places_bos_and_eos(tok):
    docs = TEXTS[:50]
    rows = pack_documents(tok, docs, 16)
    stream = [t for d in docs for t in (tok.bos_token_id, *tok(d)["input_ids"], tok.eos_token_id)]
    assert rows.dtype == torch.long and rows.shape == (len(stream) // 16, 16)
    assert rows.flatten().tolist() == stream[:rows.numel()]
    flat = rows.flatten().tolist()
    starts = [i for i, t in enumerate(flat) if t == tok.bos_token_id]
    assert starts[0] == 0 and all(flat[i - 1] == tok.eos_token_id for i in starts[1:])
    assert tok.decode(flat[:starts[1]]) == f"<s>{docs[0]}<|im_end|>"
    with pytest.raises(ValueError, match="not enough"):
        pack_documents(tok, ["hi"], 64)


def test_sft_masks_cover_exactly_response_and_eos(tok):
    exs = [SFT[0], SFT[123], SFTExample(prompt="USER: Copy 1234567890 please.\nASSISTANT:", response=" 1234567890.")]
    rows = [encode_sft(tok, e, 64) for e in exs]
    b = collate_sft(rows, tok.pad_token_id, pad_multiple=8)
    assert b["input_ids"].shape[1] % 8 == 0 and b["input_ids"].shape[1] >= max(len(r[0]) for r in rows)
    for i, e in enumerate(exs):
        ids, m, lab = b["input_ids"][i], b["response_mask"][i], b["labels"][i]
        assert tok.decode(ids[m]) == e.response + tok.eos_token
        assert int(m.sum()) == len(tok(e.response)["input_ids"]) + 1
        assert torch.equal(lab[m], ids[m]) and bool((lab[~m] == -100).all())
        assert int(b["attention_mask"][i].sum()) == len(rows[i][0])
        assert tok.decode(ids[b["attention_mask"][i] == 1]) == tok.bos_token + e.prompt + e.response + tok.eos_token
    # the mask is explicit: a response token that shares the pad id is still trained on
    pad = tok.pad_token_id
    odd = collate_sft([([tok.bos_token_id, 7, pad, tok.eos_token_id], [0, 0, 1, 1]), ([tok.bos_token_id, 7], [0, 0])], pad)
    assert odd["labels"][0].tolist() == [-100, -100, pad, tok.eos_token_id]
    assert odd["labels"][1].tolist() == [-100] * 4
    # cut at seq_len: the prompt stays, the response loses its end
    short = SFTExample(prompt="USER: Hi\nASSISTANT:", response=" 1234567890 1234567890.")
    n_prompt = 1 + len(tok(short.prompt)["input_ids"])
    ids, mask = encode_sft(tok, short, n_prompt + 4)
    assert mask == [0] * n_prompt + [1] * 4 and len(ids) == n_prompt + 4 and tok.eos_token_id not in ids


def test_sft_drops_examples_without_response_tokens(tok):
    long_prompt = SFTExample(prompt="USER: " + "word " * 80 + "\nASSISTANT:", response=" yes.")
    h = sft_train(_model(tok), tok, SFT[:40] + [long_prompt], TUNE.replace(max_steps=2))
    assert (h["examples"], h["dropped"]) == (40, 1)
    with pytest.raises(ValueError, match="no SFT example"):
        sft_train(_model(tok), tok, [long_prompt], TUNE)


def test_losses_decrease(tok):
    model = _model(tok)
    h = pretrain(model, tok, TEXTS, PRE)
    assert len(h["losses"]) == 40 and h["log"][-1]["loss"] < 0.6 * h["log"][0]["loss"]
    s = sft_train(model, tok, SFT, TUNE.replace(max_steps=30))
    assert s["log"][-1]["loss"] < 0.8 * s["log"][0]["loss"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_training_is_bit_identical(tok, dtype):
    runs = []
    for _ in range(2):
        m = _model(tok)
        h = pretrain(m, tok, TEXTS, PRE.replace(max_steps=10, dtype=dtype))
        s = sft_train(m, tok, SFT, TUNE.replace(max_steps=5, dtype=dtype))
        runs.append((model_fingerprint(m), h["losses"], s["losses"]))
    assert runs[0] == runs[1]
    m = _model(tok)
    pretrain(m, tok, TEXTS, PRE.replace(max_steps=10, dtype=dtype, seed=1))
    assert model_fingerprint(m) != runs[0][0]


def test_stop_after_replays_the_first_steps(tok):
    full = pretrain(_model(tok), tok, TEXTS, PRE)["losses"]
    assert pretrain(_model(tok), tok, TEXTS, PRE, stop_after=6)["losses"] == full[:6]


def test_default_build_is_small_enough_to_commit():
    cfg = WorldBuildConfig()
    def params(shape):
        inter = shape.intermediate_size or max(64, round(8 * shape.hidden_size / 3 / 64) * 64)
        c = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=shape.hidden_size, intermediate_size=inter,
                        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                        num_key_value_heads=shape.num_heads, tie_word_embeddings=True)
        with torch.device("meta"): return sum(p.numel() for p in LlamaForCausalLM(c).parameters())
    small, large = params(cfg.small), params(cfg.large)
    assert 0.7e6 < small < 1.5e6 and 3.5e6 < large < 5.5e6
    assert 2 * (small + 2 * large) < 25e6  # bf16 bytes of base-small, base-large and sft
    assert {cfg.pretrain_small.dtype, cfg.pretrain_large.dtype, cfg.sft.dtype} == {"bf16"}
    assert WorldBuildConfig(seed=5).sft.seed == 5 and WorldBuildConfig().replace(seed=2).pretrain_large.seed == 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("world") / "world"
    events = []
    rec = build_world(TOY, d, progress=events.append)
    return d, rec, events


def test_build_world_writes_every_artefact(built):
    d, rec, events = built
    assert sorted(p.name for p in d.iterdir()) == ["base-large", "base-small", "build.json", "sft", "tokenizer"]
    assert not list(d.parent.glob(".world.building-*"))
    assert [e["stage"] for e in events if e["event"] == "done"] == ["data", "tokenizer", "base-small", "base-large", "sft"]
    on_disk = json.loads((d / "build.json").read_text())
    assert on_disk["config_hash"] == rec["config_hash"] and WorldBuildConfig.from_dict(on_disk["config"]) == TOY
    for s in ("base-small", "base-large", "sft"):
        st = on_disk["stages"][s]
        assert len(st["first_losses"]) == 20 and st["steps"] == 25 and st["seconds"] >= 0 and st["params"] > 0
        safetensors = d / s / "model.safetensors"
        assert safetensors.stat().st_size < 2.2 * st["params"] + 4096  # stored in bf16
        assert safetensors.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # the umask's mode, not safetensors' 0600
    assert set(on_disk["seconds"]) >= {"data", "tokenizer", "base-small", "base-large", "sft", "total"}


def test_second_build_hits_the_cache(built, monkeypatch):
    d, rec, _ = built
    def no_training(*a, **k): raise AssertionError("the cached build trained again")
    monkeypatch.setattr(wm, "pretrain", no_training)
    monkeypatch.setattr(wm, "sft_train", no_training)
    t0 = time.perf_counter()
    again = build_world(TOY, d)
    assert again["cached"] and again["stages"] == rec["stages"] and time.perf_counter() - t0 < 5


def test_load_world_model_returns_the_recorded_weights(built):
    d, rec, _ = built
    for which in ("sft", "base-large", "base-small"):
        model, tok = load_world_model(which, d)
        assert model.dtype == torch.float32 and not model.training
        assert model_fingerprint(model) == rec["stages"][which]["fingerprint"]
        assert len(tok("31415")["input_ids"]) == 5
    assert load_world_model("sft", d, dtype=torch.bfloat16)[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown world model"):
        load_world_model("huge", d)
    with pytest.raises(FileNotFoundError, match="selfalign world build"):
        load_world_model("sft", d.parent / "missing")


def test_check_reproducible(built, tmp_path):
    d, _, _ = built
    report = check_reproducible(d, steps=8)
    assert report and all(report[s]["ok"] and report[s]["steps"] == 8 for s in ("base-small", "base-large", "sft"))
    assert report["data"]["ok"] and report["tokenizer"]["ok"]
    bad = tmp_path / "world"
    shutil.copytree(d, bad)
    rec = json.loads((bad / "build.json").read_text())
    rec["stages"]["base-large"]["first_losses"][3] += 1e-3
    (bad / "build.json").write_text(json.dumps(rec))
    report = check_reproducible(bad, steps=8)
    assert not report and not report["base-large"]["ok"] and report["sft"]["ok"]


def test_interrupted_build_leaves_no_complete_looking_folder(built, tmp_path, monkeypatch):
    def crash(*a, **k): raise RuntimeError("killed mid-build")
    monkeypatch.setattr(wm, "sft_train", crash)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="killed"):
        build_world(TOY, fresh)
    assert not fresh.exists() and list(tmp_path.iterdir()) == []
    # over an existing build: the old build stays whole and loadable
    old = tmp_path / "old"
    shutil.copytree(built[0], old)
    with pytest.raises(RuntimeError, match="killed"):
        build_world(TOY.replace(seed=1), old)
    assert json.loads((old / "build.json").read_text())["config_hash"] == built[1]["config_hash"]
    assert model_fingerprint(load_world_model("sft", old)[0]) == built[1]["stages"]["sft"]["fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_stale_temporary_folders_are_removed(tmp_path):
    stale = tmp_path / ".world.building-999999999-abc"
    stale.mkdir()
    (stale / "junk").write_text("left by a killed build")
    build_world(TOY, tmp_path / "world")
    assert not stale.exists() and (tmp_path / "world" / "build.json").exists()


def test_cli_world_build(built, tmp_path, capsys):
    cfg = tmp_path / "toy.json"
    cfg.write_text(json.dumps(TOY.to_dict()))
    out = tmp_path / "w"
    shutil.copytree(built[0], out)
    assert main(["world", "build", "--out", str(out), "--config", str(cfg)]) == 0
    assert "already holds this build" in capsys.readouterr().out
    assert main(["world", "build", "--out", str(out), "--config", str(cfg), "--seed", "1"]) == 0
    io = capsys.readouterr()
    assert f"wrote {out.resolve()}" in io.out and "[sft] done in" in io.err
    assert json.loads((out / "build.json").read_text())["config"]["seed"] == 1
    cfg.write_text(json.dumps({"n_docs": "many"}))
    assert main(["world", "build", "--out", str(out), "--config", str(cfg)]) == 2
    assert "n_docs" in capsys.readouterr().err
