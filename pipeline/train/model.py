"""The model: the fixed `tiny-llama` (random init, for offline runs and like-for-like benchmarks) or any
Hugging Face causal LM by id or path; LoRA/QLoRA through peft."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from pipeline.errors import UserError
from pipeline.train.config import LoraConfig, ModelConfig
from pipeline.train.encode import TokenIds

TINY_LLAMA = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_llama_config(ids: TokenIds, max_positions: int, attn_implementation: str = "sdpa") -> LlamaConfig:
    return LlamaConfig(vocab_size=ids.vocab_size, max_position_embeddings=max(max_positions, 2048),
                       bos_token_id=ids.bos_id, eos_token_id=ids.eos_id, pad_token_id=ids.pad_id, use_cache=False,
                       attn_implementation=attn_implementation, **TINY_LLAMA)


def hidden_size(config: ModelConfig) -> int:
    """Without building the model (DeepSpeed's "auto" bucket sizes are needed before loading under ZeRO-3)."""
    if config.name == "tiny-llama":
        return TINY_LLAMA["hidden_size"]
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(config.name).get_text_config().hidden_size
    except OSError as e:
        raise UserError(f"model.name: cannot load {config.name!r} ({str(e).splitlines()[0]})") from None


def build_model(config: ModelConfig, ids: TokenIds, max_positions: int) -> PreTrainedModel:
    """The base model (the caller seeds torch first: tiny-llama's init is then reproducible)."""
    dtype = DTYPES[config.dtype]
    if config.name == "tiny-llama":
        model = LlamaForCausalLM(tiny_llama_config(ids, max_positions, config.attn_implementation)).to(dtype)
    else:
        kwargs = {"dtype": dtype, "attn_implementation": config.attn_implementation}
        if config.lora and config.lora.quantize:
            kwargs["quantization_config"] = _quantization(config.lora, dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(config.name, **kwargs)
        except OSError as e:
            raise UserError(f"model.name: cannot load {config.name!r} ({str(e).splitlines()[0]})") from None
        if model.get_input_embeddings().num_embeddings < ids.vocab_size:
            model.resize_token_embeddings(ids.vocab_size)
    model.config.use_cache = False  # a KV cache in training also disables transformers' packed-sequence masks
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _quantization(lora: LoraConfig, dtype: torch.dtype):
    if not torch.cuda.is_available():
        raise UserError("model.lora.quantize: QLoRA (bitsandbytes) needs a CUDA GPU")
    from transformers import BitsAndBytesConfig

    if lora.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)


def apply_lora(model: PreTrainedModel, lora: LoraConfig, base_path: str | Path) -> torch.nn.Module:
    """Wrap `model` with LoRA adapters on all linear layers (MFTCoder's preset by default);
    `base_path` is where `merge-lora` finds the base weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora.quantize:
        model = prepare_model_for_kbit_training(model)
    peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                                 target_modules=lora.target_modules)
    model = get_peft_model(model, peft_config)
    model.peft_config["default"].base_model_name_or_path = str(base_path)
    return model


def merge_lora(adapter: str | Path, output: str | Path) -> Path:
    """Fold a trained adapter into its base model and save a plain HF model (+ tokenizer) to `output`."""
    from peft import PeftConfig, PeftModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    adapter = Path(adapter)
    try:
        base_path = PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
    except (OSError, ValueError):
        raise UserError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)") from None
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    output = Path(output)
    merged.save_pretrained(output)
    if (adapter / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(output)
    return output
