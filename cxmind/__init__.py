"""cxmind: train chest X-ray vision-language models to reason in interleaved rounds (CX-Mind) on TRL."""

__version__ = "0.1.0.dev0"
