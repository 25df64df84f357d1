"""``kind = "hf_lora"``: a pretrained Hugging Face model with LoRA: loading, setup, inference, export.

``family.py`` is what the registry loads; everything else here is used by this family only.
"""
