"""The libraries that take seconds to import: the UI never loads them (DESIGN section 1)."""

HEAVY_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "trl")
