"""Config validation: one clear line naming the key or path, and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.config import ConfigError, load_config


@pytest.fixture
def project(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text("")
    return tmp_path


def write(project, text):
    path = project / "c.yaml"
    path.write_text(text)
    return path


def test_contract_keys_parse_with_types(project):
    cfg = load_config(write(project, "model: ./model\ndata: ./train.jsonl\nmethod: lora\nmax_steps: 40\n"
                                     "learning_rate: 1.0e-3\nper_device_train_batch_size: 4\n"
                                     "max_seq_length: 128\nsave_steps: 10\neval_steps: 10\n"))
    assert cfg.max_steps == 40 and cfg.learning_rate == 1e-3 and cfg.method == "lora"
    assert cfg.data == str(project / "train.jsonl")  # relative to the config file
    assert load_config(write(project, "model: ./model\ndata: ./train.jsonl\nlearning_rate: 1e-4\n")).learning_rate == 1e-4


@pytest.mark.parametrize("text,needle", [
    ("model: ./model\ndata: ./train.jsonl\nlerning_rate: 1\n", "unknown config key 'lerning_rate'"),
    ("model: ./model\ndata: ./train.jsonl\nmax_steps: lots\n", "'max_steps': expected int"),
    ("model: ./model\ndata: ./train.jsonl\nmethod: dora\n", "'method': expected 'full' | 'lora' | 'qlora'"),
    ("model: ./model\ndata: ./missing.jsonl\n", "'data': file not found"),
    ("model: ./nomodel\ndata: ./train.jsonl\n", "'model': not found"),
    ("data: ./train.jsonl\n", "'model' is required"),
    ("model: ./model\ndata: ./train.jsonl\nper_device_train_batch_size: 0\n", "at least 1"),
    ("model: ./model\ndata: ./train.jsonl\nlearning_rate: -1\n", "'learning_rate' must be positive"),
    ("model: ./model\ndata: ./train.jsonl\npacking: yes please\n", "'packing': expected bool"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("model: [unclosed\n", "not valid YAML at line"),
    ("!!python/object/apply:os.system [echo owned]\n", "not valid YAML"),
])
def test_bad_configs_name_the_problem(project, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(project, text))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_prints_one_line_and_exits_nonzero(project, tmp_path):
    path = write(project, "model: ./model\ndata: ./train.jsonl\nbatch: 4\n")
    result = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(path), "--workspace", str(tmp_path / "ws")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown config key 'batch'" in result.stderr
    assert not (tmp_path / "ws" / "runs").exists()  # nothing was run
    missing = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "config file not found" in missing.stderr
