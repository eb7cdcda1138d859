"""Training objectives, one module each, built on engine.training.plumbing: `sft` (supervised fine-tuning)."""
