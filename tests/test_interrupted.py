"""Interrupted work: ``data convert``, ``train`` and ``md`` killed with SIGKILL, then rerun or resumed.

Every check compares with an uninterrupted run of the same command (the independent expectation). The kill
experiments live in ``scripts/reliability_kills.py`` (which also makes the figure of docs/reliability.md);
these tests run them with few kill points, the ``slow`` ones with more. Each helper kills the processes it
starts in a ``finally``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from atomnet.cli import main
from atomnet.md import complete_frames, read_log

ROOT = Path(__file__).resolve().parents[1]
XTB = ROOT / "data" / "ethanol_xtb.extxyz"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kills = load_script("reliability_kills")


# --- data convert -----------------------------------------------------------------------------------------


def check_convert(result: dict) -> None:
    """After every kill: no store, or one that opens, validates and equals the uninterrupted conversion.
    The killed process may leave its hidden temporary file (``.out.h5.<random>.tmp``: SIGKILL runs no
    cleanup); it is never taken as the store: the store's name is fixed, and every rerun writes a fresh
    temporary file, renames it onto ``out.h5`` and equals the reference."""
    for k in result["kills"]:
        assert k["outcome"] in ("no store", "complete"), k
        assert all(name.startswith(".out.h5.") and name.endswith(".tmp") for name in k["stray"]), k
    assert result["reruns"] and all(r == {"status": 0, "outcome": "complete"} for r in result["reruns"])


def test_convert_killed_leaves_no_partial_store(tmp_path):
    """Two kills of ``atomnet data convert data/ethanol_xtb.extxyz --limit 1000`` (1,000 frames, ~3 s): one
    while the store is being written (polled: the moment its temporary file appears, + 0-90 % of the
    reference's write time, ~10 ms), one at a random time before the write (0-70 % of the reference's time
    to it: the run is not over when killed, even on a loaded machine); then one rerun."""
    result = kills.convert_experiment(
        tmp_path, n_random=1, n_write=1, seed=1, limit=1000, random_before_write=True
    )
    print(result)
    check_convert(result)
    phases = {k["kind"]: k["phase"] for k in result["kills"]}
    assert phases["write window"] in ("writing", "after rename") and phases["random"] != "finished"


@pytest.mark.slow
def test_convert_killed_many_times(tmp_path):
    """All 2,000 frames: 8 kills at random times over the run and 4 in the write window, a rerun after each
    kill."""
    result = kills.convert_experiment(tmp_path, n_random=8, n_write=4, seed=0, rerun_each=True)
    check_convert(result)
    assert sum(k["phase"] == "writing" for k in result["kills"]) >= 3
    assert sum(k["phase"] != "finished" for k in result["kills"]) >= 10


# --- train ------------------------------------------------------------------------------------------------


def check_train(result: dict) -> None:
    """Killed mid-epoch: last.ckpt loads; resumed to the same max_epochs: the same weights (last.ckpt and the
    exported best model.pt), optimiser and scheduler states, bit for bit (CPU, one thread, same seed)."""
    for k in result["kills"]:
        assert k["killed_running"] and k["ckpt_loads"], k
        assert k["ckpt_epoch"] < result["max_epochs"] - 1, k  # work was left to resume
        assert k["resume_status"] == 0, k
        assert k["epochs"] == [result["max_epochs"] - 1] * 2, k
        for key in ("model_pt", "last_ckpt", "optimizer", "scheduler"):
            assert k[key] == 0.0, (key, k)


def check_truncated_resume(checkpoint: Path, folder: Path, capsys) -> None:
    """``--resume`` on ``checkpoint`` cut to half its size (as by a full disk or an interrupted copy) is a
    one-line error naming the file."""
    folder.mkdir()
    data = checkpoint.read_bytes()
    cut = folder / "last.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet train: error: --resume:") and "truncated or corrupt" in err, err
    assert "\n" not in err and str(cut) in err


def test_train_killed_mid_epoch_resumes_bit_identical(tmp_path, capsys):
    """Tiny SchNet (8 features, 60 xTB frames, batches of 1, EMA, warm-up, plateau scheduler with patience 0
    so that the learning rate is halved at most epochs): killed half an epoch after the 2nd write of
    last.ckpt (of 6 epochs), resumed with ``atomnet train --resume`` (in this process). Without :class:`atomnet.training.checkpoints.ExactResume`
    the resumed learning rate lags one halving behind and the weights differ by ~3e-2."""
    result = kills.train_experiment(tmp_path, [(2, 0.5)], max_epochs=6, in_process=True)
    print(result)
    check_train(result)
    check_truncated_resume(tmp_path / "B0" / "last.ckpt", tmp_path / "cut", capsys)


@pytest.mark.slow
def test_train_killed_at_several_points(tmp_path):
    rng = np.random.default_rng(0)
    points = [(int(rng.integers(2, 5)), float(rng.uniform(0.2, 0.8))) for _ in range(3)]
    check_train(kills.train_experiment(tmp_path, points))


def test_checkpoint_write_killed_keeps_a_complete_file(tmp_path):
    """A process killed while :class:`AtomicCheckpointIO` writes a 100 MB checkpoint leaves the previous
    complete checkpoint at the path (and its temporary file beside it). Up to 3 tries until a kill falls inside a
    write (a temporary file is left); every try must leave a complete file."""
    results = []
    for fraction in (0.15, 0.3, 0.1):
        results.append(kills.checkpoint_write_kill(tmp_path / f"w{len(results)}", fraction))
        assert results[-1]["complete"], results
        if results[-1]["stray"]:
            break
    print(results)
    assert results[-1]["stray"], "no kill fell inside a write"
    assert results[-1]["version"] >= 3  # an earlier complete version, not the one being written


def test_resume_from_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and "\n" not in err


# --- md ---------------------------------------------------------------------------------------------------


def check_md(result: dict) -> None:
    """Killed mid-run and restarted with ``--restart``: trajectory and log byte for byte those of the
    uninterrupted run (so no duplicate or missing frame or record, continuous steps), and the final exact
    positions and momenta equal (NVE velocity Verlet in float64 is deterministic; tolerance 0)."""
    for k in result["kills"]:
        assert k["killed_running"] and k["restart_status"] == 0, k
        assert "exact state" in k["restart_line"][0], k
        assert k["final_step"] == [result["steps"], result["steps"]]
        assert k["trajectory_identical"] and k["log_identical"], k
        assert k["positions"] == 0.0 and k["momenta"] == 0.0, k


def test_md_killed_restarts_bit_identical(tmp_path):
    """``atomnet md schnet-md17-ethanol`` (ethanol, NVE, float64, 300 steps, a frame every 10) killed 0.15 s
    after its 10th frame (step 90), then ``--restart`` (in this process)."""
    result = kills.md_experiment(tmp_path, [(10, 0.15)], steps=300, in_process=True)
    print(result)
    check_md(result)
    # and the restarted trajectory itself: frames at steps 0, 10, ..., 400, each once
    from ase.io import read

    frames = read(tmp_path / "B0" / "md.extxyz", index=":")
    assert [f.info["step"] for f in frames] == list(range(0, 301, 10))
    log = read_log(tmp_path / "B0" / "md.log")
    np.testing.assert_allclose(np.diff(log[:, 0]), 0.5e-3, atol=2e-6)  # one record per 0.5 fs step


@pytest.mark.slow
def test_md_killed_at_several_points(tmp_path):
    rng = np.random.default_rng(0)
    points = [(int(rng.integers(5, 30)), float(rng.uniform(0, 0.3))) for _ in range(3)]
    check_md(kills.md_experiment(tmp_path, points, steps=400))


@pytest.fixture(scope="module")
def md_reference(tmp_path_factory):
    """An uninterrupted 60-step NVE run of the shipped model (float64, a frame every 10 steps)."""
    folder = tmp_path_factory.mktemp("md")
    structure = kills.md_structure(folder)
    n = torch.get_num_threads()
    try:
        assert main(kills.md_args(structure, folder / "A", 60)) == 0
    finally:
        torch.set_num_threads(n)
    return structure, folder / "A"


def restart(structure: Path, out: Path, steps: int = 60) -> int:
    n = torch.get_num_threads()
    try:
        return main([*kills.md_args(structure, out, steps), "--restart"])
    finally:
        torch.set_num_threads(n)


def test_md_truncated_trajectory_resumes_from_last_complete_frame(md_reference, tmp_path, capsys):
    """The last frame (step 60) cut in the middle of an atom line, the state file still at step 60: the run
    resumes from the frame at step 50 with the frame's 8-decimal values (the state file does not match a
    complete frame) and ends within 1e-6 Å / 1e-6 ASE momentum units of the uninterrupted run (the ~5e-9
    rounding, amplified over 10 steps); frames and records stay continuous."""
    structure, reference = md_reference
    out = tmp_path / "B"
    shutil.copytree(reference, out)
    traj = out / "md.extxyz"
    frames = complete_frames(traj)
    start, end = frames[-1]
    data = traj.read_bytes()
    traj.write_bytes(data[: start + (end - start) // 2])
    assert len(complete_frames(traj)) == len(frames) - 1
    log_lines = (out / "md.log").read_text().splitlines(keepends=True)
    (out / "md.log").write_text("".join(log_lines[:-3]) + log_lines[-3][:10])  # and a cut record
    capsys.readouterr()
    assert restart(structure, out) == 0
    printed = capsys.readouterr().out
    assert "restarted from step 50" in printed and "8-decimal" in printed
    from ase.io import read

    got, want = read(traj, index=":"), read(reference / "md.extxyz", index=":")
    assert [f.info["step"] for f in got] == [f.info["step"] for f in want] == list(range(0, 61, 10))
    np.testing.assert_allclose(got[-1].positions, want[-1].positions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[-1].get_momenta(), want[-1].get_momenta(), rtol=0, atol=1e-6)
    log, ref_log = read_log(out / "md.log"), read_log(reference / "md.log")
    assert log.shape == ref_log.shape == (61, 5)
    np.testing.assert_allclose(log, ref_log, rtol=0, atol=1e-5)


def test_md_restart_after_kill_between_frame_and_state_is_exact(md_reference, tmp_path, capsys):
    """A kill after frame 60 was flushed but before the state file was replaced (state still at step 50):
    the restart drops frame 60 and continues bit for bit from the exact state of step 50."""
    structure, reference = md_reference
    out = tmp_path / "B"
    shutil.copytree(reference, out)
    # the state at step 50: rerun the reference to step 50 in a scratch folder and take its state file
    scratch = tmp_path / "to50"
    n = torch.get_num_threads()
    try:
        assert main(kills.md_args(structure, scratch, 50)) == 0
    finally:
        torch.set_num_threads(n)
    shutil.copy(scratch / "md.restart.npz", out / "md.restart.npz")
    capsys.readouterr()
    assert restart(structure, out) == 0
    printed = capsys.readouterr().out
    assert "restarted from step 50" in printed and "exact state" in printed
    assert (out / "md.extxyz").read_bytes() == (reference / "md.extxyz").read_bytes()
    assert (out / "md.log").read_bytes() == (reference / "md.log").read_bytes()


def test_md_restart_without_complete_frame_is_one_line_error(md_reference, tmp_path, capsys):
    structure, reference = md_reference
    out = tmp_path / "B"
    shutil.copytree(reference, out)
    traj = out / "md.extxyz"
    traj.write_bytes(traj.read_bytes()[:300])  # not even the first frame complete
    capsys.readouterr()
    assert restart(structure, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet md: error:") and "no complete frame" in err and "\n" not in err
    shutil.rmtree(out)
    assert restart(structure, out) == 2
    err = capsys.readouterr().err.strip()
    assert "no trajectory to restart from" in err and "\n" not in err


SCHNET = dict(name="schnet", n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10)
CMNET = {"name": "cmnet", "max_atoms": 9, "hidden": [16, 8], "max_z": 10, "sigma": 1.0}


@pytest.mark.parametrize(
    "model, optim",
    [
        (CMNET, {"plateau_patience": 0, "energy_weight": 1.0, "forces_weight": 0.0}),
        (SCHNET, {"scheduler": "step", "milestones": [1, 3], "step_factor": 2}),
        (SCHNET, {"scheduler": "batch_growth", "milestones": [1, 3], "step_factor": 2, "max_batch_size": 8}),
    ],
    ids=["cmnet-plateau", "schnet-step", "schnet-batch-growth"],
)
def test_resume_is_bit_identical(model, optim, tmp_path):
    """2 epochs + ``--resume`` to 5 equal 5 epochs in one go (in this process). CMNet draws random sortings
    from torch's global generator while training (without the per-epoch seeding of :class:`ExactResume`
    its weights differ by ~1e-2); the step and batch-growth schedules step at the epoch's last batch, before
    the checkpoint, and must not be stepped again on resume."""
    from atomnet.training.commands import resume_config, train
    from atomnet.training.config import config_from_dict

    kills.train_config(tmp_path)  # writes the 60-frame store
    store = tmp_path / "ethanol60.h5"
    forces = None if model["name"] == "cmnet" else "forces"

    def config(epochs: int):
        return config_from_dict(
            {
                "model": dict(model),
                "data": {"path": str(store), "split": [40, 10, 10], "batch_size": 4, "forces_key": forces},
                "optim": {"lr": 1e-3, **optim},
                "train": {
                    "max_epochs": epochs,
                    "out_dir": str(tmp_path),
                    "progress_bar": False,
                    "plots": False,
                    "num_threads": 1,
                },
            }
        )

    n = torch.get_num_threads()
    try:
        train(config(5), run_dir=tmp_path / "full", quiet=True)
        half = train(config(2), run_dir=tmp_path / "half", quiet=True)
        ckpt = half["last_checkpoint"]
        train(resume_config(ckpt, ["train.max_epochs=5"]), resume=ckpt, quiet=True)
    finally:
        torch.set_num_threads(n)
    diff = kills.compare_runs(tmp_path / "full", tmp_path / "half")
    assert diff == {"epochs": [4, 4], "model_pt": 0.0, "last_ckpt": 0.0, "optimizer": 0.0, "scheduler": 0.0}
