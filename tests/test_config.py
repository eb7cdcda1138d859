"""Config validation: one clear line naming the key or path, and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.training.config import ConfigError, load_config, parse_config


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
    ("model: ./model\ndata: ./train.jsonl\nsample_prompts: -1\n", "'sample_prompts' must be 0 (off) or more"),
    ("model: ./model\ndata: ./train.jsonl\nnnodes: 2\n", "'nnodes' is 2, so 'network_interface' is required"),
    ("model: ./model\ndata: ./train.jsonl\nnetwork_interface: eth0\n", "one machine listens on loopback only"),
    ("model: ./model\ndata: ./train.jsonl\nnnodes: 2\nnetwork_interface: eth0\nrdzv_endpoint: node0\n",
     "'rdzv_endpoint': expected HOST:PORT"),
    ("model: ./model\ndata: ./train.jsonl\nfsdp: zero3\n", "'fsdp': expected 'full_shard' | 'shard_grad_op'"),
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


BASE = "model: ./model\ndata: ./train.jsonl\n"
# A billion laughs: 8 levels of 9 aliases, 43 million strings once expanded.
LAUGHS = "report_to: [" + ", ".join(f"&{k} [" + ", ".join([f"*{p}"] * 9 if p else ['"x"'] * 9) + "]"
                                     for p, k in zip([None, *"abcdefg"], "abcdefgh")) + "]\n"


@pytest.mark.parametrize("text,needle", [
    # found by the fault suite (tests/faults/input_faults.py): each raised something other than
    # ConfigError (a traceback on the command line), printed several lines, or took a run to find out
    (BASE + "1: x\nfoo: 2\n", "unknown config key 1"),  # TypeError sorting int and str keys
    ("model: '~nosuchuser/m'\ndata: ./train.jsonl\n", "'model': cannot expand '~nosuchuser/m'"),  # RuntimeError
    ("model: ./model\ndata: '~nosuchuser/d'\n", "'data': cannot expand"),
    ('model: "./model\\0"\ndata: ./train.jsonl\n', "'model': contains a NUL character"),  # ValueError
    ("model: ./model\ndata: ./" + "a" * 5000 + "\n", "'data': cannot use"),  # OSError: file name too long
    ("model: ./loop\ndata: ./train.jsonl\n", "'model': cannot use"),  # RuntimeError: symlink loop
    ("[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),  # RecursionError
    (BASE + "max_steps: 3\x01\n", "unacceptable character #x0001"),  # a ReaderError printed two lines
    (LAUGHS + BASE, "'report_to': expected"),  # a repr of 43M strings
    (BASE + "num_train_epochs: -5\n", "'num_train_epochs' must be above 0"),
    (BASE + "warmup_steps: -1\n", "'warmup_steps' must be at least 0"),
    (BASE + "weight_decay: -0.1\n", "'weight_decay' must be at least 0"),
    (BASE + "max_grad_norm: -1\n", "'max_grad_norm' must be at least 0"),
    (BASE + "lora_dropout: 1\n", "'lora_dropout' must be at least 0 and below 1"),
    (BASE + "early_stopping_threshold: -1\n", "'early_stopping_threshold' must be at least 0"),
    (BASE + "divergence_factor: 0.5\n", "'divergence_factor' must be above 1"),
    (BASE + "grad_spike_factor: 1\n", "'grad_spike_factor' must be above 1"),
    (BASE + "seed: -1\n", "'seed' must be in [0, 2**32)"),
    (BASE + "max_seq_length: 100000000000000000000\n", "'max_seq_length' must be at most 2147483647"),
    (BASE + "num_train_epochs: .inf\n", "'num_train_epochs': expected a finite number"),
    (BASE + "learning_rate: .nan\n", "'learning_rate': expected a finite number"),
    (BASE + "learning_rate: 1" + "0" * 400 + "\n", "'learning_rate': expected a finite number"),
    (BASE + "lora_target_modules: []\n", "'lora_target_modules' must name at least one module"),
    (BASE + "max_steps: !!int 'abc'\n", "cannot be read as its type"),  # ValueError from PyYAML's constructor
    (BASE + "x: !!bool 'maybe'\n", "cannot be read as its type"),  # KeyError
    (BASE + "x: !!timestamp 'soon'\n", "cannot be read as its type"),  # AttributeError
    (BASE + "max_steps: 1" + "0" * 5000 + "\n", "cannot be read as its type"),  # int() digit limit
])
def test_fault_suite_configs_give_one_line(project, text, needle):
    (project / "loop").symlink_to(project / "loop")
    with pytest.raises(ConfigError) as err:
        load_config(write(project, text))
    assert needle in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 1000


def test_report_to_a_missing_package_is_one_line(tmp_path, monkeypatch):
    """Found by CI: without tensorboard installed, `report_to: [tensorboard]` failed the run after the
    model had loaded; now the config is refused before anything starts."""
    import engine.training.config

    monkeypatch.setitem(engine.training.config.REPORTER_PACKAGES, "tensorboard", ("no_such_package_for_tunedeck",))
    (tmp_path / "m").mkdir()
    (tmp_path / "d.jsonl").write_text("{}\n")
    raw = {"model": str(tmp_path / "m"), "data": str(tmp_path / "d.jsonl"), "report_to": ["tensorboard"]}
    with pytest.raises(ConfigError, match="report_to.*tensorboard needs the no_such_package_for_tunedeck package"):
        parse_config(raw)
    parse_config({**raw, "report_to": ["none"]})
