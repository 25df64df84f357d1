"""``kind = "gpt"``: our GPT trained from scratch: model, decoding, CPU kernels, HF and GGUF export.

``family.py`` is what the registry loads; everything else here is used by this family only.
"""
