"""Hugging Face config.json contents of published models, for estimates without downloading a model."""

LLAMA_32_3B = dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                   num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)
LLAMA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
LLAMA_2_13B = dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                   num_attention_heads=40, num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False)
LLAMA_3_70B = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                   num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                   max_position_embeddings=8192, rope_theta=500000.0)
MIXTRAL_8X7B = dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, num_local_experts=8,
                    num_experts_per_tok=2, max_position_embeddings=32768, rope_theta=1e6, sliding_window=None,
                    tie_word_embeddings=False)
QWEN3_30B_A3B = dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                     num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                     vocab_size=151936, num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1,
                     mlp_only_layers=[], norm_topk_prob=True, max_position_embeddings=40960,
                     tie_word_embeddings=False)
FALCON_7B = dict(model_type="falcon", hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                 multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False, alibi=False,
                 vocab_size=65024)
GPT2 = dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
PHI_15 = dict(model_type="phi", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
              num_attention_heads=32, vocab_size=51200, partial_rotary_factor=0.5, max_position_embeddings=2048,
              tie_word_embeddings=False)
PHI_2 = dict(model_type="phi", hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
             num_attention_heads=32, vocab_size=51200, partial_rotary_factor=0.4, max_position_embeddings=2048,
             tie_word_embeddings=False)
GEMMA_2_2B = dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                  sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                  tie_word_embeddings=True)
GEMMA_3_1B = dict(model_type="gemma3_text", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                  sliding_window=512, tie_word_embeddings=True)
PYTHIA_6_9B = dict(model_type="gpt_neox", hidden_size=4096, intermediate_size=16384, num_hidden_layers=32,
                   num_attention_heads=32, vocab_size=50432, rotary_pct=0.25, use_parallel_residual=True,
                   tie_word_embeddings=False)
T5_SMALL = dict(model_type="t5", d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64, vocab_size=32128)
BERT_BASE = dict(model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522)

# Parameter counts the model cards publish (safetensors totals, tied weights once).
PUBLISHED_PARAMETERS = {
    "LLAMA_7B": 6_738_415_616, "LLAMA_2_13B": 13_015_864_320, "LLAMA_3_70B": 70_553_706_496,
    "MIXTRAL_8X7B": 46_702_792_704, "QWEN3_30B_A3B": 30_532_122_624, "FALCON_7B": 6_921_720_704,
    "GPT2": 124_439_808, "PHI_15": 1_418_270_720, "PHI_2": 2_779_683_840, "GEMMA_2_2B": 2_614_341_888,
    "GEMMA_3_1B": 999_885_952, "PYTHIA_6_9B": 6_857_302_016,
}
STABLELM_ALPHA_3B = dict(model_type="gpt_neox", hidden_size=4096, intermediate_size=16384, num_hidden_layers=16,
                         num_attention_heads=32, vocab_size=50688, rotary_pct=0.25, use_parallel_residual=True,
                         max_position_embeddings=4096, tie_word_embeddings=False)
