"""The safetensors reader: values equal safetensors' own loader, in the file's dtype and converted, integer tensors
kept, bad files named."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from lmm.models.safetensors_reader import iter_tensors, load_into, read_header, tensor_entries


def test_reads_what_safetensors_reads_with_and_without_conversion(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"small": torch.randn(3, generator=g), "big": torch.randn(64, 33, generator=g),
               "bigger": torch.randn(128, 70, generator=g), "ids": torch.arange(7), "scalar": torch.tensor(2.5)}
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(tmp_path / "a.safetensors"))
    entries = tensor_entries([tmp_path / "a.safetensors"])
    reference = load_file(str(tmp_path / "a.safetensors"))
    same = dict(iter_tensors(entries, torch.float16))
    converted = dict(iter_tensors(entries, torch.bfloat16))  # fp16 -> bf16 through a growing scratch buffer
    for name, expected in reference.items():
        assert torch.equal(same[name], expected), name
        if expected.is_floating_point():
            assert converted[name].dtype == torch.bfloat16 and torch.equal(converted[name], expected.bfloat16())
        else:
            assert converted[name].dtype == torch.int64 and torch.equal(converted[name], expected)

    # same dtype: a view of the file's private memory map (shared page cache, no copy); writes never reach the file
    size = (tmp_path / "a.safetensors").stat().st_size
    assert same["big"].untyped_storage().nbytes() == size and same["big"].is_contiguous()
    same["big"].zero_()
    assert torch.equal(load_file(str(tmp_path / "a.safetensors"))["big"], reference["big"])
    assert not dict(iter_tensors(entries, torch.float16, map_same_dtype=False))["big"].untyped_storage().nbytes() == size

    save_file({"weight": tensors["big"], "bias": torch.zeros(64)}, str(tmp_path / "linear.safetensors"))
    with torch.device("meta"):
        skeleton = torch.nn.Linear(33, 64)
    load_into(skeleton, tensor_entries([tmp_path / "linear.safetensors"]), torch.bfloat16)
    assert skeleton.weight.dtype == torch.bfloat16 and torch.equal(skeleton.weight, tensors["big"].bfloat16())


def test_bad_files_are_named(tmp_path):
    (tmp_path / "notes.safetensors").write_text("hello")
    with pytest.raises(ValueError, match="notes.safetensors: not a safetensors file"):
        read_header(tmp_path / "notes.safetensors")
    save_file({"w": torch.ones(1000)}, str(tmp_path / "cut.safetensors"))
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"tensor 'w' ends at byte .* \(truncated file\?\)"):
        tensor_entries([tmp_path / "cut.safetensors"])
