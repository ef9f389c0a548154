"""The LLM judge against a local fake OpenAI-compatible server (stdlib `http.server` on 127.0.0.1, in a thread): both
orders, strict verdicts, ties, position bias, the cache and resuming, retries (429 + Retry-After, 5xx, timeouts),
clear errors (server down, model not served), the concurrency limit, and the API key kept out of caches and logs."""
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from selfalign.judges.base import BandPrompt
from selfalign.judges.llm import LLMJudge, LLMJudgeError

MODEL = "judge-model"


def default_reply(messages):
    "A judge that can read: the answer marked GOOD wins, two GOOD answers tie; a GOOD answer gets 8, others 3."
    system, user = messages[0]["content"], messages[-1]["content"]
    if "Rating: [[N]]" in system:  # grade the last answer shown
        last = user.rsplit("### Assistant:", 1)[-1] if "### Assistant:" in user else user.split("[Assistant's reply]")[-1]
        return "Looks fine.\nRating: [[8]]" if "GOOD" in last else "Weak.\nRating: [[3]]"
    a = user.split("[Assistant A's reply]")[-1].split("[End of assistant A's reply]")[0] if "[Assistant A's reply]" in user else user.split("[End of conversation with assistant A]")[0]
    b = user.split("[Assistant B's reply]")[-1] if "[Assistant B's reply]" in user else user.split("[End of conversation with assistant A]")[1]
    ga, gb = "GOOD" in a, "GOOD" in b
    return "Both fine. [[C]]" if ga == gb else ("A is better.\n[[A]]" if ga else "B is better.\n[[B]]")


class Fake:
    "A fake OpenAI-compatible chat server; `rule(n, body)` may return (status, headers, payload) or None for a reply."
    def __init__(self):
        self.requests, self.auth, self.inflight, self.max_inflight, self.lock = [], [], 0, 0, threading.Lock()
        self.reply, self.rule, self.delay = default_reply, None, 0.0
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def send(self, status, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers: self.send_header(k, v)
                self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(data)))
                self.end_headers(); self.wfile.write(data)
            def do_GET(self):
                self.send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "me"}]})
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    n = len(fake.requests); fake.requests.append(body); fake.auth.append(self.headers.get("Authorization"))
                    fake.inflight += 1; fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    if fake.delay: time.sleep(fake.delay(n) if callable(fake.delay) else fake.delay)
                    if body["model"] != MODEL:
                        return self.send(404, {"error": {"message": f"The model `{body['model']}` does not exist.", "type": "NotFoundError", "code": 404}})
                    special = fake.rule(n, body) if fake.rule else None
                    if special: return self.send(special[0], special[2], special[1])
                    text = fake.reply(body["messages"])
                    self.send(200, {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": MODEL,
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}})
                except (BrokenPipeError, ConnectionResetError): pass
                finally:
                    with fake.lock: fake.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def users(self): return [r["messages"][-1]["content"] for r in self.requests]


@pytest.fixture
def fake():
    f = Fake()
    yield f
    f.httpd.shutdown(); f.httpd.server_close()


@pytest.fixture(autouse=True)
def secret_key(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-SECRET-0123456789")
    return "sk-test-SECRET-0123456789"


def judge(fake, tmp_path=None, **kw):
    j = LLMJudge(MODEL, base_url=fake.url, api_key_env="JUDGE_TEST_KEY", cache_dir=tmp_path, **kw)
    j.backoff = 0.01  # seconds before the first retry: the tests have no time to wait
    return j


Q = ["What is 2+2?", "Name a prime.", "Say hi."]


def test_pairwise_both_orders_verdicts_and_ties(fake):
    j = judge(fake)
    r = j.pairwise(Q, ["GOOD: 4", "9", "GOOD hi"], ["5", "GOOD: 7", "GOOD hello"])
    assert r.outcome.tolist() == [1, -1, 0]  # a wins, b wins, a tie
    assert r.first == ["A", "B", "C"] and r.second == ["B", "A", "C"] and r.unparseable == [False] * 3
    assert r.position_bias == 0.0 and j.name == f"LLM judge {MODEL}"
    users = fake.users()
    assert len(users) == 6
    for i, (x, y) in enumerate([("GOOD: 4", "5"), ("9", "GOOD: 7")]):  # each item asked as (a, b) and as (b, a)
        shown = [u for u in users if Q[i] in u]
        assert len(shown) == 2 and sorted(u.index(x) < u.index(y) for u in shown) == [False, True]
    assert j.usage["calls"] == 6 and j.usage["prompt_tokens"] == 600 and j.usage["completion_tokens"] == 42


def test_position_bias_is_a_tie_and_measured(fake):
    fake.reply = lambda m: "[[A]]"  # always the first answer shown
    r = judge(fake).pairwise(Q, ["GOOD"] * 3, ["bad"] * 3)
    assert r.outcome.tolist() == [0, 0, 0] and r.position_bias == 1.0 and r.first == r.second == ["A"] * 3
    fake.reply = lambda m: "[[B]]"  # always the second: disagreement too, but not towards the first position
    assert judge(fake).pairwise(Q, ["GOOD"] * 3, ["bad"] * 3).position_bias == 0.0


def test_grade_reference_turns_and_judge_protocol(fake):
    j = judge(fake)
    assert j.grade(Q[:2], ["GOOD 4", "9"]) == [8.0, 3.0]
    j.grade(["What is 3*3?"], ["GOOD 9"], references=["9"])
    assert "[Reference answer]\n9" in fake.users()[-1]
    g = j.grade([["Write a haiku.", "Now make it about rain."]], [["a haiku", "GOOD rain haiku"]])
    u = fake.users()[-1]
    assert g == [8.0] and "Now make it about rain." in u and "a haiku" in u and "LAST question" in fake.requests[-1]["messages"][0]["content"]
    with pytest.raises(ValueError, match="2 question turns but 1 answer turns"): j.grade([["x", "y"]], [["z"]])
    prompts = [BandPrompt(q, "unknown", q) for q in Q[:2]]
    assert j.score(prompts, ["GOOD 4", "9"]) == [8.0, 3.0]
    assert j.rates(prompts, ["GOOD 4", "9"]) == {"mean_grade": 5.5, "unparseable_rate": 0.0}
    assert fake.requests[0]["temperature"] == 0.0 and fake.requests[0]["max_tokens"] == 512


def test_malformed_verdicts_are_retried_then_unparseable(fake):
    said = iter(range(100))
    fake.reply = lambda m: f"I would say A is better, rating seven ({next(said)})."  # malformed, differently each time
    j = judge(fake)
    assert j.grade(["q"], ["a"]) == [None]
    assert len(fake.requests) == 1 + j.malformed_retries and j.usage["unparseable"] == 1
    fake.requests.clear()
    fake.reply = lambda m: "I would say A is better, rating seven."  # a greedy judge: the same words again
    assert j.grade(["q1"], ["a"]) == [None] and len(fake.requests) == 2  # asked once more, not `malformed_retries` times
    fake.requests.clear()
    r = j.pairwise(["q"], ["x"], ["y"])
    assert len(fake.requests) == 2 * 2 and r.unparseable == [True] and r.outcome.tolist() == [0] and r.first == [None] and np.isnan(r.position_bias)
    assert np.isnan(j.score([BandPrompt("q", "unknown", "q")], ["a"])[0])
    fake.requests.clear()
    replies = iter(["Rating: 7", "Rating: [[7]]"])  # malformed once, then well formed in a fresh call
    fake.reply = lambda m: next(replies)
    assert judge(fake).grade(["q2"], ["a2"]) == [7.0] and len(fake.requests) == 2


def test_cache_second_run_makes_zero_calls(fake, tmp_path):
    a = judge(fake, tmp_path)
    r1, g1 = a.pairwise(Q, ["GOOD"] * 3, ["x"] * 3), a.grade(Q, ["GOOD", "x", "y"])
    n = len(fake.requests)
    b = judge(fake, tmp_path)
    r2, g2 = b.pairwise(Q, ["GOOD"] * 3, ["x"] * 3), b.grade(Q, ["GOOD", "x", "y"])
    assert len(fake.requests) == n == 9 and b.usage["calls"] == 0 and b.usage["cache_hits"] == 9
    assert r1.outcome.tolist() == r2.outcome.tolist() and g1 == g2
    other = LLMJudge(MODEL, base_url=fake.url, api_key_env="JUDGE_TEST_KEY", cache_dir=tmp_path, grade_template="pairwise")
    assert other.grade(Q[:1], ["GOOD"]) == [None]  # another template is another cache key: asked afresh (and malformed)
    again = LLMJudge(MODEL, base_url=fake.url, api_key_env="JUDGE_TEST_KEY", cache_dir=tmp_path, grade_template="pairwise")
    assert again.grade(Q[:1], ["GOOD"]) == [None] and again.usage["unparseable"] == 1 and again.usage["calls"] == 0


def test_killed_run_resumes_with_only_the_missing_items(fake, tmp_path):
    fake.rule = lambda n, body: (500, [], {"error": {"message": "boom"}}) if n >= 4 else None  # the server dies after 4
    qs, ans = [f"q{i}" for i in range(10)], [f"a{i}" for i in range(10)]
    with pytest.raises(LLMJudgeError, match=re.escape(fake.url)):
        judge(fake, tmp_path, concurrency=1, max_retries=0).grade(qs, ans)
    cache = tmp_path / "llm_judge.jsonl"
    assert len(cache.read_text().splitlines()) == 4
    with open(cache, "a") as f: f.write('{"key": "abc", "verdict": 7, "repl')  # killed mid-write
    fake.rule, fake.requests = None, []
    j = judge(fake, tmp_path)
    assert j.grade(qs, ans) == [3.0] * 10
    assert len(fake.requests) == 6 and j.usage["cache_hits"] == 4  # only the missing items
    again = judge(fake, tmp_path)
    assert again.grade(qs, ans) == [3.0] * 10 and again.usage["calls"] == 0  # the file is whole after the bad line


def test_server_down_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    j = LLMJudge(MODEL, base_url=f"http://127.0.0.1:{port}/v1", api_key_env="JUDGE_TEST_KEY", max_retries=1)
    j.backoff = 0.01
    with pytest.raises(LLMJudgeError, match=rf"127\.0\.0\.1:{port}/v1 is unreachable"): j.grade(["q"], ["a"])
    assert j.usage["retries"] == 1


def test_model_not_served_is_a_clear_error(fake):
    j = LLMJudge("no-such-model", base_url=fake.url, api_key_env="JUDGE_TEST_KEY")
    with pytest.raises(LLMJudgeError, match=r"does not serve model 'no-such-model'; it serves \['judge-model'\]"):
        j.grade(["q"], ["a"])


def test_timeouts_are_retried_then_a_clear_error(fake):
    fake.delay = lambda n: 1.0 if n == 0 else 0.0  # the first request hangs past the timeout
    j = judge(fake, timeout=0.3)
    assert j.grade(["q"], ["GOOD"]) == [8.0] and j.usage["retries"] == 1
    fake.delay = 1.0
    with pytest.raises(LLMJudgeError, match="timed out after 2 attempts"): judge(fake, timeout=0.2, max_retries=1).grade(["q2"], ["a"])


def test_429_with_retry_after_is_retried(fake):
    fake.rule = lambda n, body: (429, [("Retry-After", "0.4")], {"error": {"message": "slow down"}}) if n < 2 else None
    j = judge(fake)
    t = time.monotonic()
    assert j.grade(["q"], ["GOOD"]) == [8.0]
    assert time.monotonic() - t >= 0.8 and j.usage["retries"] == 2 and len(fake.requests) == 3
    fake.rule = lambda n, body: (503, [], {"error": {"message": "overloaded"}}) if n < 4 else None  # 5xx: retried too
    assert judge(fake).grade(["q3"], ["x"]) == [3.0]


def test_concurrency_limit_is_respected(fake):
    fake.delay = 0.1
    j = judge(fake, concurrency=3)
    t = time.monotonic()
    j.grade([f"q{i}" for i in range(12)], ["a"] * 12)
    assert fake.max_inflight == 3 and time.monotonic() - t < 1.0  # 12 requests, 3 at a time: 4 rounds of 0.1 s


def test_api_key_never_in_cache_or_logs(fake, tmp_path, caplog, secret_key):
    caplog.set_level(logging.DEBUG)
    fake.rule = lambda n, body: (429, [("Retry-After", "0")], {"error": {"message": "slow"}}) if n == 0 else None
    j = judge(fake, tmp_path)
    j.grade(Q, ["GOOD"] * 3)
    assert fake.auth[0] == f"Bearer {secret_key}"  # it is sent...
    assert secret_key not in (tmp_path / "llm_judge.jsonl").read_text() and secret_key not in caplog.text  # ...never kept
    assert "retry 1/5" in caplog.text and secret_key not in repr(j)


def test_no_key_sends_a_dummy(fake, monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY")
    assert judge(fake).grade(["q"], ["GOOD"]) == [8.0] and fake.auth == ["Bearer EMPTY"]


# The reward-model judge for hub sequence-classification reward models (`RewardModelJudge.from_pretrained`).

@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
    from importlib.resources import files
    d = tmp_path_factory.mktemp("rm")
    tok = AutoTokenizer.from_pretrained(str(files("selfalign") / "assets" / "world" / "tokenizer"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_labels=1, pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(cfg).eval()
    model.save_pretrained(d); tok.save_pretrained(d)
    return d, model, tok


def test_reward_model_judge_scores_via_the_chat_template(tiny_rm):
    import torch
    from selfalign.judges.base import Judge, RewardModelJudge
    d, model, tok = tiny_rm
    assert list(d.glob("*.safetensors")) and not list(d.glob("*.bin"))
    rm = RewardModelJudge.from_pretrained(d, batch_size=2)
    prompts = [BandPrompt(t, "unknown", f"<ctx>{t}") for t in ["How do I bake bread?", "Tell me a joke.", "Hi"]]
    responses = ["Mix flour, water and yeast, then bake.", "No.", "Hello there, how can I help you today?"]
    got = rm.score(prompts, responses)
    for p, r, g in zip(prompts, responses, got):  # one at a time, unpadded, from the user's text (not the context)
        text = tok.apply_chat_template([{"role": "user", "content": p.text}, {"role": "assistant", "content": r}], tokenize=False)
        with torch.no_grad(): want = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
        assert g == pytest.approx(want, abs=1e-5)
    assert len(set(got)) == 3 and isinstance(rm, Judge) and rm.name == f"reward model {d}" and rm.tie == 0.0


def test_reward_model_judge_refuses_remote_code_architectures(tiny_rm, tmp_path):
    import shutil
    from selfalign.judges.base import JudgeUnavailable, RewardModelJudge
    d = tmp_path / "score"
    shutil.copytree(tiny_rm[0], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForScore"]}))  # safe-rlhf's score model
    with pytest.raises(JudgeUnavailable, match=r"LlamaForScore, not a `transformers` \.\.\.ForSequenceClassification.*no trust_remote_code"):
        RewardModelJudge.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({**cfg, "num_labels": 2, "id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}}))
    with pytest.raises(JudgeUnavailable, match="has 2 labels"): RewardModelJudge.from_pretrained(d)


def test_a_guided_judge_asks_for_the_verdict_alone(fake, tmp_path):
    "vLLM's structured outputs hold a small local judge's reply to its verdict's form; the cache keeps guided replies apart."
    from selfalign.judges.llm import GUIDED
    def verdict_only(messages):  # what a server that honours the constraint returns
        return "Rating: [[6]]" if "Rating: [[N]]" in messages[0]["content"] else "[[B]]"
    fake.reply = verdict_only
    g = LLMJudge(MODEL, base_url=fake.url, api_key_env="JUDGE_TEST_KEY", cache_dir=tmp_path, guided=True)
    assert g.grade(["q"], ["a"]) == [6.0] and g.pairwise(["q"], ["x"], ["y"]).first == ["B"]
    assert [b["structured_outputs"]["regex"] for b in fake.requests] == [GUIDED["grade"], GUIDED["pairwise"], GUIDED["pairwise"]]
    assert re.fullmatch(GUIDED["grade"], "Rating: [[10]]") and not re.fullmatch(GUIDED["grade"], "Rating: [[11]]")
    plain = LLMJudge(MODEL, base_url=fake.url, api_key_env="JUDGE_TEST_KEY", cache_dir=tmp_path)
    assert plain.grade(["q"], ["a"]) == [6.0] and plain.usage["calls"] == 1 and "structured_outputs" not in fake.requests[-1]
