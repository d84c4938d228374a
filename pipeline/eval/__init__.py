"""`pipeline eval`: HumanEval / MBPP pass@k of a causal LM. `problems` (the benchmarks as prompts and test
programs), `generate` (batched HF generation), `sandbox` (one isolated subprocess per completion),
`harness` (execution in parallel, the unbiased pass@k, results files)."""
