"""--device / --dtype resolution: auto follows the hardware, impossible choices are errors naming the flag."""

import logging

import pytest
import torch

from peft_neft.device import cpu_has_native_bf16, resolve_device, resolve_dtype


def test_auto_device_is_cuda_only_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("text", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_the_flag(text):
    with pytest.raises(ValueError, match="--device .*no CUDA"):
        resolve_device(text)


@pytest.mark.parametrize("text", ["tpu", "gpu0", "mps"])
def test_unknown_devices_are_refused(text):
    with pytest.raises(ValueError, match="--device"):
        resolve_device(text)


def test_auto_dtype_follows_native_bf16_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="peft_neft.device"):
        dtype = resolve_dtype("auto", torch.device("cpu"))
    assert dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert "dtype auto -> " in caplog.text


def test_bf16_on_a_cpu_without_it_names_the_flag():
    if cpu_has_native_bf16():
        assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="--dtype bfloat16: this CPU has neither AVX512-BF16 nor AMX"):
            resolve_dtype("bfloat16", "cpu")


def test_explicit_float32_and_bad_names():
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype(torch.float32, "cpu") == torch.float32
    for bad in ("float16", "fp8", torch.int8):
        with pytest.raises(ValueError, match="--dtype"):
            resolve_dtype(bad, "cpu")


@pytest.mark.skipif(torch.cuda.is_available() or cpu_has_native_bf16(), reason="needs a CPU-only machine without bf16")
@pytest.mark.parametrize("command", [
    ["demo", "--out", "{tmp}/d"],
    ["compare", "--train", "{tmp}/t.jsonl", "--eval", "{tmp}/t.jsonl", "--methods", "lora:8", "--out", "{tmp}/c"],
    ["calibrate", "--data", "{tmp}/t.jsonl", "--percent", "1", "--out", "{tmp}/s.safetensors"],
    ["analyze", "--model-a", "default", "--model-b", "default", "--data", "{tmp}/t.jsonl", "--out", "{tmp}/a"],
])
@pytest.mark.parametrize("flag, message", [(["--device", "cuda"], "--device 'cuda': this machine has no CUDA"),
                                           (["--dtype", "bfloat16"], "--dtype bfloat16: this CPU has neither")])
def test_every_command_refuses_what_the_machine_cannot_do(tmp_path, capsys, command, flag, message):
    from peft_neft.cli import main

    (tmp_path / "t.jsonl").write_text('{"source": "a", "target": "b", "text": "a"}\n')
    assert main([part.format(tmp=tmp_path) for part in command] + flag) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()
