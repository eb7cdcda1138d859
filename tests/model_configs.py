"""Hugging Face config.json contents of published models, for estimates without downloading a model."""

LLAMA_32_3B = dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                   num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)
LLAMA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
