"""What a new user meets first: the commands' --help, choices that are honoured or refused (never
silently overwritten), a finished run that is never rewritten, and output without noise."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hmrnn import train as train_command
from hmrnn.compose import choices, compose
from hmrnn.config import ConfigError, dotted_keys, get
from tests.helpers import run
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


# ------------------------------------------------------------------ choices never overwritten
@pytest.mark.parametrize(
    ("argv", "model", "data"),
    [
        (["experiment=demo", "model.name=lstm"], "lstm", "synthetic"),
        (["model.name=soft_gated"], "soft_gated", "synthetic"),
        (["experiment=demo", "data.name=ptb"], "hmlstm", "ptb"),
        (["model=lstm", "model.name=lstm"], "lstm", "synthetic"),
    ],
)
def test_model_name_and_data_name_are_the_group_choices(
    argv: list[str], model: str, data: str
) -> None:
    config, _ = compose(argv)
    assert (config.model.name, config.data.name) == (model, data)
    as_groups = [a.replace("model.name=", "model=").replace("data.name=", "data=") for a in argv]
    assert config == compose(list(dict.fromkeys(as_groups)))[0]  # the same as model= / data=


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.name=gru"], r"model='gru' has no file .*available: fixed_boundary, hmlstm"),
        (["data.name=wiki"], r"data='wiki' has no file"),
        (["model=lstm", "model.name=hmlstm"], r"model is chosen twice .*'lstm' and 'hmlstm'"),
    ],
)
def test_a_wrong_or_conflicting_name_is_refused_before_any_work(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train_command.main([*argv, f"out_dir={tmp_path}"])
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused command"


def test_a_yaml_file_that_sets_a_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    for group in ("model", "data", "experiment"):
        (conf / group).mkdir(parents=True)
        for name in choices(group):
            (conf / group / f"{name}.yaml").write_text(
                (ROOT / "conf" / group / f"{name}.yaml").read_text()
            )
    (conf / "experiment" / "bad.yaml").write_text("model:\n  name: lstm\n")
    monkeypatch.setenv("HMRNN_CONF", str(conf))
    with pytest.raises(ConfigError, match=r"experiment/bad.yaml sets model.name; choose"):
        compose(["experiment=bad"])


def swept_values(spec: dict[str, Any]) -> list[Any]:
    """The values a sweep parameter can take (for a distribution: its bounds)."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def fixed_arguments(sweep: dict[str, Any]) -> list[str]:
    """The command's own key=value items (without wandb's macros)."""
    return [item for item in sweep["command"] if "=" in item and "${" not in item]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_swept_key_changes_the_composed_config(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    fixed = fixed_arguments(sweep)
    for key, spec in sweep["parameters"].items():
        for value in swept_values(spec):
            config, _ = compose([*fixed, f"{key}={value}"])
            key_in_config = {"model": "model.name", "data": "data.name"}.get(key, key)
            got = get(config, key_in_config)
            assert got == value, f"{path.name}: {key}={value!r} composed {key_in_config}={got!r}"


# ------------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """A tiny run, finished, with its test limited to one batch; and what it printed."""
    tmp = tmp_path_factory.mktemp("finished")
    argv = [*TINY, f"out_dir={tmp}", "run_name=done", "logger.mode=disabled"]
    argv += ["trainer.max_steps=30", "trainer.limit_test_batches=1"]
    result = run([sys.executable, "-m", "hmrnn.train", *argv], watch=[tmp])
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp / "done"
    return run_dir, json.loads((run_dir / "results.json").read_text()), result.stdout


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("target", ["folder", "last", "best"])
def test_resuming_a_finished_run_is_refused_and_leaves_it_byte_identical(
    finished: tuple[Path, dict[str, Any], str], target: str
) -> None:
    run_dir = finished[0]
    path = {
        "folder": run_dir,
        "last": run_dir / "checkpoints" / "last.ckpt",
        "best": run_dir / "checkpoints" / "best.ckpt",
    }[target]
    before = digests(run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "hmrnn.train", f"resume={path}", "trainer.max_steps=60"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: resume=") and "has finished" in last
    assert f"python -m hmrnn.evaluate {run_dir / 'checkpoints' / 'best.ckpt'}" in last
    assert digests(run_dir) == before


def test_evaluate_measures_a_finished_runs_model_without_touching_the_run(
    finished: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    from datamodules import build_datamodule
    from hmrnn.checkpoints import load_module
    from hmrnn.evaluate import run_split

    run_dir = finished[0]
    best = run_dir / "checkpoints" / "best.ckpt"
    before = digests(run_dir)
    out = tmp_path / "metrics.json"
    command = [sys.executable, "-m", "hmrnn.evaluate", str(best), "split=valid", f"out={out}"]
    result = run(command, watch=[tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert "val/bpc" in result.stdout and "val/word_f1_l1_tol0" in metrics
    module = load_module(best)
    dm = build_datamodule(module.config.data)
    dm.setup()
    bpc, _, _ = run_split(module.model, dm, "valid")  # the whole split, state carried
    assert metrics["val/bpc"] == pytest.approx(bpc, rel=1e-5)
    assert digests(run_dir) == before


def test_a_resume_may_not_choose_another_model(finished: tuple[Path, dict[str, Any], str]) -> None:
    run_dir = finished[0]
    (run_dir / "results.json").rename(run_dir / "results.json.kept")  # as if it had stopped
    try:
        with pytest.raises(ConfigError, match=r"model='lstm' differs from the resumed run's"):
            train_command.main([f"resume={run_dir}", "model=lstm"])
    finally:
        (run_dir / "results.json.kept").rename(run_dir / "results.json")


def test_results_and_summary_say_where_things_are_and_what_to_run_next(
    finished: tuple[Path, dict[str, Any], str],
) -> None:
    run_dir, results, stdout = finished
    assert results["best_checkpoint"] == os.path.join("checkpoints", "best.ckpt")
    assert len(results["boundary_rates"]) == 2, "the top layer has no detector, so no rate"
    assert "l3 " not in stdout.split("boundary rates")[1].splitlines()[0]
    best = run_dir / "checkpoints" / "best.ckpt"
    assert f"results: {run_dir / 'results.json'}" in stdout
    for command in ("visualize", "generate", "evaluate"):
        assert f"python -m hmrnn.{command} {best}" in stdout


def test_limit_test_batches_limits_the_test_and_the_boundary_scores(
    finished: tuple[Path, dict[str, Any], str],
) -> None:
    results = finished[1]
    # one batch of 8 rows x 25 steps: the one-process pass covers the same symbols
    assert results["test_bpc_one_process"] == pytest.approx(results["metrics"]["test/bpc"], 1e-5)
    scores = results["boundaries"]["l1/word/tol0"]
    assert scores["rate"] == pytest.approx(results["boundary_rates"][0], abs=1e-6)


# ---------------------------------------------------------------------------------- --help
HELP_WITHOUT_LIGHTNING = """
import sys
from hmrnn.{module} import main
main(["{flag}"])
heavy = sorted(m for m in ("lightning", "torch", "wandb") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_choices_and_every_key_without_importing_lightning(flag: str) -> None:
    code = HELP_WITHOUT_LIGHTNING.format(module="train", flag=flag)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip().splitlines()[-1] == "HEAVY []"
    assert out.startswith("usage: python -m hmrnn.train")
    for group in ("experiment", "model", "data"):
        for name in choices(group):
            assert f"\n  {name}\n" in out, f"{group}={name} missing from --help"
    for key in dotted_keys():
        assert f"\n  {key}: " in out, f"{key} missing from --help"
    assert "  model.hidden_size: int = 512\n      H, the size of every layer." in out
    assert "\n      choices: step | step_leaky | bernoulli | soft\n" in out


@pytest.mark.parametrize("command", ["visualize", "generate", "evaluate"])
def test_checkpoint_commands_have_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"hmrnn.{command}", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m hmrnn.{command} <checkpoint>")
    from hmrnn.cli import COMMANDS

    for key in COMMANDS[f"hmrnn.{command}"].options:
        assert f"\n  {key} " in result.stdout
    code = HELP_WITHOUT_LIGHTNING.format(module=command, flag="--help")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert "lightning" not in out.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------- noise
NOISE = (
    "GPU available",
    "TPU available",
    "litlogger",
    "was configured so 100%",
    "anonymous setting has no effect",
    "LeafSpec",
    "exists and is not empty",
    "sync_dist=True",
    "all_gather is deprecated",
)


@pytest.mark.slow
def test_runs_print_no_known_noise_but_real_warnings_still_show(tmp_path: Path) -> None:
    """A 2-process DDP run with W&B offline, then a resume of it in one process: none of the
    messages known to be harmless, while the resume's real warning (another process count)
    is still printed."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    argv = [*TINY, f"out_dir={tmp_path}", "run_name=ddp", "logger.mode=offline"]
    argv += ["trainer.max_steps=12", "trainer.val_check_interval=6", "test=false"]
    argv += ["trainer.checkpoint_every_n_steps=3"]
    argv += ["trainer.devices=2", "trainer.strategy=ddp"]
    first = run([sys.executable, "-m", "hmrnn.train", *argv], env=env, watch=[tmp_path])
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    (run_dir / "results.json").unlink()  # as if it had stopped at the checkpoint before
    previous = run_dir / "checkpoints" / "previous.ckpt"  # last.ckpt marks the training done
    again = [f"resume={previous}", "trainer.devices=1"]
    second = run([sys.executable, "-m", "hmrnn.train", *again], env=env, watch=[tmp_path])
    assert second.returncode == 0, second.stderr[-3000:]
    printed = first.stdout + first.stderr + second.stdout + second.stderr
    for noise in NOISE:
        assert noise not in printed, f"{noise!r} is printed"
    assert "random draws continue from fresh seeds" in second.stderr
