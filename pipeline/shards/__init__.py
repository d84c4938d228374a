"""Training data made from a clean corpus: SFT mixes (MFTCoder multi-task format), tasks mined with
tree-sitter, a byte-level BPE tokenizer, and packed pre-training shards with FIM and repo context."""
