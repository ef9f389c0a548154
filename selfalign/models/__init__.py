"""The model loader (device, dtype, LoRA/QLoRA, BOS/EOS policy, fingerprint), the tiny Llama and its tokenizer, SmolLM2."""
