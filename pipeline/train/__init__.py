"""`pipeline train`: stream SFT / pre-training Parquet shards into a Hugging Face causal LM.

Plain PyTorch in the spirit of nanoGPT/litgpt: `data` (streaming, exactly-once, resumable),
`chat` (SFT encoding), `packing` (sequences and batches), `model` (tiny-llama and HF models, LoRA),
`loss` (MFTCoder losses), `engine` (torch/DDP or DeepSpeed), `trainer` (the loop, checkpoints, logs).
"""
