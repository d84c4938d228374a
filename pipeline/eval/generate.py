"""Batched generation with a Hugging Face causal LM: greedy or sampled, n samples per prompt, each
stopped at the benchmark's stop sequences."""

from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.eval.problems import Problem, truncate


def load_model(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load a model and tokenizer ({str(e).splitlines()[0]})") from None
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    if tokenizer.pad_token is None:  # a bare tokenizer.json names no special tokens: the model config does
        pad_id = next((i for i in (model.config.pad_token_id, model.config.eos_token_id) if i is not None), None)
        if pad_id is None and tokenizer.eos_token is None:
            raise UserError(f"{path}: neither tokenizer nor model config names a pad or EOS token")
        tokenizer.pad_token = tokenizer.eos_token if pad_id is None else tokenizer.convert_ids_to_tokens(pad_id)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tokenizer


def generate(model_path: str | Path, problems: list[Problem], n: int, temperature: float, top_p: float,
             max_new_tokens: int, batch_size: int, seed: int = 0) -> list[list[str]]:
    """n completions per problem. Prompts are batched longest first (less padding); each sequence stops
    at its first stop string and the completion is cut there."""
    model, tokenizer = load_model(str(model_path))
    torch.manual_seed(seed)
    jobs = sorted(((i, p) for i, p in enumerate(problems) for _ in range(n)), key=lambda job: -len(job[1].prompt))
    out: list[list[str]] = [[] for _ in problems]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        inputs = tokenizer([p.prompt for _, p in batch], return_tensors="pt", padding=True).to(model.device)
        stops = sorted({s for _, p in batch for s in p.stop})
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                                    pad_token_id=tokenizer.pad_token_id, stop_strings=stops, tokenizer=tokenizer,
                                    **sampling)
        texts = tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for (i, problem), text in zip(batch, texts, strict=True):
            out[i].append(truncate(text, problem.stop))
    return out
