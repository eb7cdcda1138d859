"""Models on local disk: find one (directory, GGUF, HF cache, demo), read its facts from headers, load it (the one loader; heavy, torch inside)."""
