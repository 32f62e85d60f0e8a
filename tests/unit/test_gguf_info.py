"""A GGUF's header read the way the worker reads it before every load: the same values as the gguf package's own
reader, in both byte orders, arrays skipped, and fast enough for a load (the package's reader took 34 s on Gemma 3
270M's 262k-token vocabulary: twice per load, past every test's registration wait)."""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from services.common.gguf_info import NotGGUF, _metadata, read
from tests.conftest import ROOT

MODELS = ROOT / "models"
GEMMA = MODELS / "gemma-3-270m-q4_k_m.gguf"
MINILM = MODELS / "all-minilm-l6-v2-f16.gguf"


def written(path: Path, endian: gguf.GGUFEndian) -> Path:
    """A small GGUF with every kind of value: scalars, strings, arrays of numbers, of strings, of arrays."""
    writer = gguf.GGUFWriter(path, "llama", endianess=endian)
    writer.add_name("tiny")
    writer.add_context_length(8192)
    writer.add_block_count(30)
    writer.add_head_count(9)
    writer.add_head_count_kv(3)
    writer.add_embedding_length(576)
    writer.add_chat_template("{{ messages }}")
    writer.add_bool("tiny.flag", True)
    writer.add_float32("tiny.scale", 0.5)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "ünï", "", "end"])
    writer.add_array("tokenizer.ggml.scores", [0.1, 0.2, 0.3])
    writer.add_array("tiny.nested", [[1, 2], [3]])
    writer.add_uint64("tiny.after_arrays", 2**40)
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_every_kind_of_value_in_either_byte_order(tmp_path: Path, endian: gguf.GGUFEndian) -> None:
    fields = _metadata(written(tmp_path / "tiny.gguf", endian))
    assert fields["tiny.after_arrays"] == 2**40, "the arrays before it were skipped by their exact length"
    assert fields["tiny.flag"] is True and fields["tiny.scale"] == 0.5
    assert fields["tokenizer.ggml.tokens"] is None and fields["tiny.nested"] is None
    info = read(tmp_path / "tiny.gguf")
    assert (info.architecture, info.context_length, info.name) == ("llama", 8192, "tiny")
    assert info.chat_template == "{{ messages }}"
    assert (info.layers, info.kv_width) == (30, 2 * (576 // 9) * 3)


@pytest.mark.skipif(not MINILM.exists(), reason="run `make models` first")
def test_the_same_values_as_the_gguf_package_s_reader() -> None:
    reader = gguf.GGUFReader(MINILM)
    theirs = {
        key: None if field.types[0] == gguf.GGUFValueType.ARRAY else field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.")  # the reader's own entries for the file's header
    }
    assert _metadata(MINILM) == theirs


@pytest.mark.skipif(not GEMMA.exists(), reason="run `make models` first")
def test_a_262k_token_vocabulary_takes_seconds_at_most() -> None:
    started = time.monotonic()
    info = read(GEMMA)
    assert time.monotonic() - started < 5, "the worker reads this before each load"
    assert (info.architecture, info.context_length, info.layers, info.kv_width) == ("gemma3", 32768, 18, 512)


@pytest.mark.skipif(not GEMMA.exists(), reason="run `make models` first")
@pytest.mark.parametrize("cut", [0, 3, 20, 4096, 3_000_000])
def test_a_file_cut_short_or_not_a_gguf_is_one_line(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(GEMMA.read_bytes()[:cut] if cut else b"")
    with pytest.raises(NotGGUF, match="not a readable GGUF file"):
        read(path)
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(NotGGUF, match="no GGUF magic"):
        read(path)
