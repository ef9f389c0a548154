"""The `generate` module: HF backend parity and seeding, stop strings, log-probs, resumable shards, cache, stage CLI."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import json
import re
import runpy
import subprocess
import sys

import pytest
import torch

from selfalign.generate.base import (BACKENDS, CachedGenerator, GenerateConfig, Generation, Generator, HFGenerator,
                                     SamplingParams, ShardMismatchError, backend_factory, generate_to_shards, load_prompts,
                                     make_generator, prompt_seed, read_shards, render_prompts, template_params)
from selfalign.models.loader import model_fingerprint, tiny_causal_lm

PROMPTS = ["Hello there", "The capital of France is", "A", "Water boils at 100 degrees Celsius at sea level",
           "Write a short poem about the sea.", "def add(a, b):"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(seed=0)


@pytest.fixture(scope="module")
def hf(tiny):
    model, tok = tiny
    return HFGenerator(model, tok, batch_size=4, dtype="fp32")


class Counting:
    "A generator wrapper that records the prompts reaching the model, and can die after `fail_after` calls."
    def __init__(self, g, fail_after=None):
        self.g, self.name, self.fingerprint, self.fail_after = g, g.name, g.fingerprint, fail_after
        self.calls, self.seen = 0, []

    def generate(self, prompts, params):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after: raise RuntimeError("killed")
        self.seen += list(prompts)
        return self.g.generate(prompts, params)

    def close(self): pass


def assert_same(a, b, atol=1e-5):
    "Generations equal up to float noise in log-probs (batch composition changes the last bits of the logits)."
    assert [(g.prompt, g.texts, g.token_ids, g.finish_reasons) for g in a] == \
           [(g.prompt, g.texts, g.token_ids, g.finish_reasons) for g in b]
    for x, y in zip(a, b):
        assert (x.logprobs is None) == (y.logprobs is None)
        for u, v in zip(x.logprobs or [], y.logprobs or []):
            torch.testing.assert_close(torch.tensor(u), torch.tensor(v), atol=atol, rtol=0)


def teacher_forced_logprobs(model, prompt_ids, ids):
    with torch.no_grad(): logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1]
    return logits.float().log_softmax(-1).gather(1, torch.tensor(ids)[:, None])[:, 0]


def test_protocol(hf, tmp_path):
    assert isinstance(hf, Generator)
    assert isinstance(CachedGenerator(hf, tmp_path), Generator)
    assert hf.name == "hf" and len(hf.fingerprint) == 16


def test_greedy_matches_model_generate(tiny, hf):
    model, tok = tiny
    gens = hf.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=16))
    for prompt, g in zip(PROMPTS, gens):  # one prompt at a time, no padding
        x = tok(prompt, return_tensors="pt")
        ref = model.generate(**x, do_sample=False, max_new_tokens=16)[0, x["input_ids"].shape[1]:].tolist()
        assert g.token_ids == [ref]
    x = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")  # the same left-padded batch
    ref = model.generate(**x, do_sample=False, max_new_tokens=16)[:, x["input_ids"].shape[1]:].tolist()
    assert [g.token_ids[0] for g in HFGenerator(model, tok, batch_size=len(PROMPTS), dtype="fp32").generate(
        PROMPTS, SamplingParams(temperature=0, max_new_tokens=16))] == ref


def test_n_samples_in_order_and_diverse(hf):
    gens = hf.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=12))
    assert [g.prompt for g in gens] == PROMPTS
    for g in gens:
        assert len(g.texts) == len(g.token_ids) == len(g.finish_reasons) == 4 and g.logprobs is None
        assert len(set(g.texts)) > 1
    # sample j of a prompt is the same whether asked for with n=2 or n=4
    gens2 = hf.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12))
    assert [g.token_ids for g in gens2] == [g.token_ids[:2] for g in gens]


def test_seeded_reproducible(tiny, hf):
    model, tok = tiny
    p = SamplingParams(n=3, temperature=0.9, top_p=0.95, top_k=100, max_new_tokens=12, seed=7)
    a, b = hf.generate(PROMPTS, p), hf.generate(PROMPTS, p)
    assert a == b
    # independent of batch size and prompt order
    c = HFGenerator(model, tok, batch_size=7, dtype="fp32").generate(PROMPTS[::-1], p)[::-1]
    assert [g.token_ids for g in c] == [g.token_ids for g in a]
    # a prompt's samples do not depend on the other prompts of the call
    assert hf.generate(PROMPTS[2:3], p)[0].token_ids == a[2].token_ids
    assert hf.generate(PROMPTS, p.replace(seed=8))[0].token_ids != a[0].token_ids
    assert prompt_seed(7, "x") == prompt_seed(7, "x") != prompt_seed(8, "x")


def test_stop_strings(tiny, hf):
    _, tok = tiny
    stop = ("e", "\n")
    gens = hf.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=40, stop=stop, logprobs=True))
    reasons = [r for g in gens for r in g.finish_reasons]
    assert reasons.count("stop") >= len(reasons) // 2
    for g in gens:
        for text, ids, lps, why in zip(g.texts, g.token_ids, g.logprobs, g.finish_reasons):
            assert not any(s in text for s in stop)
            assert len(lps) == len(ids)
            if why == "stop":
                full = tok.decode(ids)
                assert len(ids) < 40 and any(s in full for s in stop)  # halted early, at the completing token
                assert not any(s in tok.decode(ids[:-1]) for s in stop)
                assert full.startswith(text)


def test_logprobs_equal_teacher_forcing(tiny, hf):
    model, tok = tiny
    for params in (SamplingParams(n=2, temperature=1.0, max_new_tokens=10, logprobs=True, seed=1),
                   SamplingParams(n=2, temperature=0.5, top_k=20, top_p=0.8, max_new_tokens=10, logprobs=True),
                   SamplingParams(temperature=0, max_new_tokens=10, logprobs=True)):
        gens = hf.generate(PROMPTS[:4], params)
        for g in gens:
            assert len(g.logprobs) == params.n
            for ids, lps in zip(g.token_ids, g.logprobs):
                assert len(lps) == len(ids) and all(lp <= 0 for lp in lps)
                ref = teacher_forced_logprobs(model, tok(g.prompt)["input_ids"], ids)
                torch.testing.assert_close(torch.tensor(lps), ref, atol=1e-4, rtol=0)


def test_eos_finish_and_no_pad_token(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight); head.bias.zero_(); head.bias[tok.eos_token_id] = 100.0
    m.lm_head = head  # always says eos
    g = HFGenerator(m, tok, dtype="fp32").generate(PROMPTS[:2], SamplingParams(n=2, max_new_tokens=5, logprobs=True))
    assert [x.finish_reasons for x in g] == [["eos", "eos"]] * 2
    assert g[0].token_ids == [[tok.eos_token_id]] * 2 and g[0].texts == ["", ""]
    # no pad token anywhere: eos pads; results are unchanged
    t2, m2 = copy.deepcopy(tok), copy.deepcopy(model)
    t2.pad_token = None
    m2.generation_config.pad_token_id = None
    assert t2.pad_token_id is None
    p = SamplingParams(n=2, max_new_tokens=12, seed=3, stop=("e",))
    a = HFGenerator(m2, t2, batch_size=3, dtype="fp32")
    assert a.pad == tok.eos_token_id
    assert [x.token_ids for x in a.generate(PROMPTS, p)] == \
           [x.token_ids for x in HFGenerator(model, tok, batch_size=3, dtype="fp32").generate(PROMPTS, p)]


def test_bf16_copy_leaves_model_untouched(tiny):
    model, tok = tiny
    fp = model_fingerprint(model)
    g = HFGenerator(model, tok, dtype="bf16")
    assert g.model.dtype == torch.bfloat16 and model.dtype == torch.float32 and model_fingerprint(model) == fp
    assert g.fingerprint != HFGenerator(model, tok, dtype="fp32").fingerprint
    gens = g.generate(PROMPTS[:2], SamplingParams(n=2, max_new_tokens=8, logprobs=True))
    assert all(len(ids) == len(lps) for x in gens for ids, lps in zip(x.token_ids, x.logprobs))


def test_resumable_shards(hf, tmp_path):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(11)]
    p = SamplingParams(n=2, max_new_tokens=6, seed=4, logprobs=True)
    killed = Counting(hf, fail_after=2)
    with pytest.raises(RuntimeError, match="killed"):
        generate_to_shards(killed, prompts, tmp_path / "run", p, shard_size=3, progress=False)
    assert sorted(f.name for f in (tmp_path / "run").glob("shard-*")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    with pytest.raises(FileNotFoundError, match="2 of 4 shards missing"):
        read_shards(tmp_path / "run")
    resumed = Counting(hf)
    generate_to_shards(resumed, prompts, tmp_path / "run", p, shard_size=3, progress=False)
    assert resumed.seen == prompts[6:]  # only the unfinished shards were generated
    lines = [json.loads(l)["prompt"] for f in sorted((tmp_path / "run").glob("shard-*.jsonl"))
             for l in f.read_text().splitlines()]
    assert lines == prompts  # every prompt exactly once, in order
    whole = read_shards(generate_to_shards(hf, prompts, tmp_path / "whole", p, shard_size=3, progress=False))
    assert read_shards(tmp_path / "run") == whole
    assert_same(whole, hf.generate(prompts, p))
    again = Counting(hf)
    generate_to_shards(again, prompts, tmp_path / "run", p, shard_size=3, progress=False)
    assert again.calls == 0
    assert all(isinstance(g, Generation) for g in whole)


def test_manifest_mismatch_refused(tiny, hf, tmp_path):
    model, tok = tiny
    prompts, p = PROMPTS, SamplingParams(n=1, max_new_tokens=4)
    generate_to_shards(hf, prompts, tmp_path, p, shard_size=4, progress=False)
    for what, call in [
        ("params", lambda: generate_to_shards(hf, prompts, tmp_path, p.replace(temperature=0.5), shard_size=4)),
        ("prompts_sha256", lambda: generate_to_shards(hf, prompts[::-1], tmp_path, p, shard_size=4)),
        ("shard_size", lambda: generate_to_shards(hf, prompts, tmp_path, p, shard_size=2)),
        ("fingerprint", lambda: generate_to_shards(HFGenerator(tiny_causal_lm(tokenizer=tok, seed=1)[0], tok, dtype="fp32"),
                                                   prompts, tmp_path, p, shard_size=4)),
    ]:
        with pytest.raises(ShardMismatchError, match=what):
            call()
    assert len(read_shards(tmp_path)) == len(prompts)


def test_cache_hit_avoids_model_calls(hf, tmp_path):
    inner = Counting(hf)
    cg = CachedGenerator(inner, tmp_path)
    p = SamplingParams(n=2, max_new_tokens=8, seed=2, logprobs=True)
    first = cg.generate(PROMPTS[:3], p)
    assert inner.seen == PROMPTS[:3]
    second = cg.generate(PROMPTS[:3], p)
    assert inner.calls == 1 and second == first and (cg.hits, cg.misses) == (3, 3)
    third = cg.generate(PROMPTS[:4], p)  # one new prompt: only it reaches the model
    assert inner.seen == PROMPTS[:4] and third[:3] == first
    assert_same(third, hf.generate(PROMPTS[:4], p))
    # a fresh process (new wrapper, same folder) hits the on-disk cache
    inner2 = Counting(hf)
    assert CachedGenerator(inner2, tmp_path).generate(PROMPTS[:4], p) == third and inner2.calls == 0
    cg.generate(PROMPTS[:1], p.replace(seed=3))  # another seed is another key
    assert inner.seen[-1] == PROMPTS[0]


def test_chat_template_rendering(hf):
    prompts = render_prompts(["Hello!", "Name a colour."], "chatml")
    assert prompts[0] == "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    p = template_params(SamplingParams(n=2, max_new_tokens=8), "chatml")
    assert "<|im_end|>" in p.stop
    assert [len(g.texts) for g in hf.generate(prompts, p)] == [2, 2]


def test_cli_writes_shards(tiny, hf, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "model"); tok.save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    params = SamplingParams(n=2, max_new_tokens=8, seed=11, stop=("\n",))
    cfg = GenerateConfig(model=str(tmp_path / "model"), prompts=str(tmp_path / "prompts.jsonl"), sampling=params,
                         dtype="fp32", batch_size=3, shard_size=4)
    cfg.to_json(tmp_path / "cfg.json")
    r = subprocess.run([sys.executable, "-m", "selfalign.generate.base", "--config", str(tmp_path / "cfg.json"),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run" / "generations"
    assert sorted(f.name for f in out.iterdir()) == ["manifest.json", "shard-00000.jsonl", "shard-00001.jsonl"]
    gens = read_shards(out)
    assert_same(gens, hf.generate(PROMPTS, params))
    summary = json.loads((tmp_path / "run" / "generate.json").read_text())
    assert summary["prompts"] == len(PROMPTS) and summary["samples"] == 2 * len(PROMPTS)
    assert GenerateConfig.from_json(tmp_path / "run" / "config.json") == cfg
    bad = subprocess.run([sys.executable, "-m", "selfalign.generate.base", "--config", str(tmp_path / "nope.json"),
                          "--out", str(tmp_path / "run2")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope.json" in bad.stderr


def test_backend_registry_names_vllm_without_importing_it():
    code = ("import sys, selfalign.generate.base as b\n"
            "assert 'selfalign.generate.vllm' not in sys.modules, 'generate.base imported generate.vllm'\n"
            "f = b.backend_factory('vllm')\n"
            "import selfalign.generate.vllm as v\n"
            "assert f is v.vllm_backend\n"
            "print(sorted(b.BACKENDS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "['hf', 'vllm']"


def test_make_generator_builds_the_named_backend(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    model.save_pretrained(tmp_path / "model"); tok.save_pretrained(tmp_path / "model")
    g = make_generator(GenerateConfig(model=str(tmp_path / "model"), dtype="fp32", batch_size=3))
    assert isinstance(g, HFGenerator) and g.batch_size == 3 and g.dtype == torch.float32
    monkeypatch.setenv("SELFALIGN_CACHE", str(tmp_path / "cache"))
    cached = make_generator(GenerateConfig(model=str(tmp_path / "model"), dtype="fp32", cache=True))
    assert isinstance(cached, CachedGenerator) and isinstance(cached.generator, HFGenerator)
    assert cached.path == tmp_path / "cache" / "generations" / "generations.sqlite"
    cached.close()
    seen = []
    monkeypatch.setitem(BACKENDS, "hf", lambda cfg, dtype: seen.append((cfg.model, dtype)) or "built")
    assert make_generator(GenerateConfig(model="m", dtype="fp32")) == "built" and seen == [("m", torch.float32)]
    with pytest.raises(ValueError, match=r"unknown backend 'tgi'; use one of \['hf', 'vllm'\]"): backend_factory("tgi")


def test_damaged_shards_are_named_and_generated_again(hf, tmp_path, capsys):
    "Any existing shard used to count as done; a cut line gave a bare JSONDecodeError, a missing line a folder-wide count."
    prompts, p = [f"Question {i}: what is {i} plus {i}?" for i in range(7)], SamplingParams(n=2, max_new_tokens=4, seed=1)
    run = generate_to_shards(hf, prompts, tmp_path / "run", p, shard_size=3, progress=False)
    s0, s1 = run / "shard-00000.jsonl", run / "shard-00001.jsonl"
    good0, good1 = s0.read_text(), s1.read_text()
    s0.write_text(good0[:len(good0) // 2])  # cut inside line 2, as by a full disk or an interrupted copy
    with pytest.raises(ValueError, match=re.escape(f"{s0}:2: not a generation record")):
        read_shards(run)
    s0.write_text(good0); s1.write_text("".join(good1.splitlines(True)[:2]))  # a whole line missing
    with pytest.raises(ValueError, match=re.escape(f"{s1}: 2 lines where its slice has 3 prompts")):
        read_shards(run)
    s0.write_text(good0[:len(good0) // 2])
    again = Counting(hf)
    generate_to_shards(again, prompts, run, p, shard_size=3, progress=False)
    assert again.seen == prompts[:6]  # the two damaged shards, and nothing else
    err = capsys.readouterr().err
    assert "generating shard-00000.jsonl again" in err and "generating shard-00001.jsonl again" in err, err
    assert read_shards(run) == read_shards(generate_to_shards(hf, prompts, tmp_path / "whole", p, shard_size=3, progress=False))


def test_truncated_manifest_is_named(hf, tmp_path):
    p = SamplingParams(n=1, max_new_tokens=4)
    run = generate_to_shards(hf, PROMPTS, tmp_path / "run", p, shard_size=4, progress=False)
    m = run / "manifest.json"
    m.write_text(m.read_text()[:50])
    for call in (lambda: read_shards(run), lambda: generate_to_shards(hf, PROMPTS, run, p, shard_size=4, progress=False)):
        with pytest.raises(ValueError, match=re.escape(f"{m}: truncated or not JSON")):
            call()


def test_prompts_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "a"}\n\n{"prompt": "cut sho\n')
    with pytest.raises(ValueError, match=re.escape(f"{f}:3: not valid JSON")):  # was: "line 1 column 12", no file
        load_prompts(f)
    f.write_text('{"prompt": "a"}\n{"prompt": " "}\n')
    with pytest.raises(ValueError, match=re.escape(f"{f}:2: the prompt (field 'prompt') is empty")):  # was: accepted
        load_prompts(f)
    f.write_bytes('\ufeff{"prompt": "Hi"}\n'.encode())  # a byte-order mark, as Windows editors write: was refused
    assert load_prompts(f) == ["Hi"]
    f.write_text('{"prompt": "a\u2028b"}\n{"prompt": "c"}\n', encoding="utf-8")  # U+2028 is valid inside a JSON string
    assert load_prompts(f) == ["a\u2028b", "c"]
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: no such prompts file")):
        load_prompts(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("case", ["empty_prompt", "missing_model", "no_tokenizer", "cut_weights", "cut_manifest"])
def test_stage_refuses_bad_input_with_exit_code_2(case, tmp_path, monkeypatch, capsys):
    "`python -m selfalign.generate.base` (run in this process) ends a bad input with one error line, no traceback."
    prompts, model = tmp_path / "prompts.jsonl", tmp_path / "model"
    prompts.write_text('{"prompt": "Hi"}\n' + ('{"prompt": ""}\n' if case == "empty_prompt" else ""))
    if case in ("no_tokenizer", "cut_weights"):
        model.mkdir(); (model / "config.json").write_text("{}")
    if case == "cut_weights":
        (model / "tokenizer.json").write_text("{}"); (model / "model.safetensors").write_bytes(b"\x40" + b"\x00" * 7 + b'{"w": {')
    if case == "cut_manifest":
        (tmp_path / "run" / "generations").mkdir(parents=True); (tmp_path / "run" / "generations" / "manifest.json").write_text('{"form')
    GenerateConfig(model=str(model), prompts=str(prompts)).to_json(tmp_path / "cfg.json")
    monkeypatch.setattr(sys, "argv", ["selfalign.generate.base", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("selfalign.generate.base", run_name="__main__", alter_sys=True)
    err = capsys.readouterr().err
    expect = {"empty_prompt": f"{prompts}:2: the prompt (field 'prompt') is empty",
              "missing_model": f"no such model folder {model}", "no_tokenizer": f"{model} has no tokenizer files",
              "cut_weights": f"{model / 'model.safetensors'}: not a complete safetensors file",
              "cut_manifest": f"{tmp_path / 'run' / 'generations' / 'manifest.json'}: truncated or not JSON"}[case]
    assert e.value.code == 2 and f"error: {expect}" in err and "Traceback" not in err, err
