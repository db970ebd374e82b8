"""Data-parallel training with two CPU processes (gloo), launched by the README's own lines: the same
losses and weights as one process with the same global batch, checkpoint and resume included."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
# CPU scale: the tiny model on 16 phantom studies; grad_accum 2 and the findings head (the recipe's) included
SMALL = ["--preset", "tiny-random", "--data", "phantom:templated", "--image_size", "64", "--max_train_samples", "16",
         "--max_val_samples", "4", "--eval_every", "2", "--save_every", "2", "--no_progress", "--grad_accum", "2"]


def readme_launch_lines() -> list[str]:
    """The command lines of the README's block of data-parallel launches."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Many GPUs, data-parallel.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no block of data-parallel launch lines"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"} | (env or {})
    bin_dir = str(Path(sys.executable).parent)  # accelerate and torchrun of this environment
    environment["PATH"] = f"{environment.get('PATH_FIRST', '')}:{bin_dir}:{environment['PATH']}".lstrip(":")
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def losses(out_dir: Path) -> list[dict[str, float]]:
    with (out_dir / "metrics.csv").open() as handle:
        return [{k: float(v) for k, v in row.items() if k in ("train_loss", "val_loss", "findings_loss") and v}
                for row in csv.DictReader(handle)]


def assert_same_run(got: Path, expected: Path) -> None:
    """The same loss curve (to float tolerance: two processes sum in another order) and final weights."""
    assert [row.keys() for row in losses(got)] == [row.keys() for row in losses(expected)]
    for step, (a, b) in enumerate(zip(losses(got), losses(expected), strict=True), start=1):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}"
    mine, theirs = load_file(got / "model" / "model.safetensors"), load_file(expected / "model" / "model.safetensors")
    assert mine.keys() == theirs.keys()
    worst = max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in mine)
    assert worst < 1e-5, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """Four steps of one process with batch 4: the global batch of two processes with batch 2."""
    out = tmp_path_factory.mktemp("one") / "run"
    run([sys.executable, "-m", "flamingo_lib.cli.train", *SMALL, "--batch_size", "4", "--max_steps", "4",
         "--out_dir", str(out)], ROOT)
    return out


def two_processes(line: str) -> list[str]:
    """A README line at CPU scale: two processes instead of four, on a free port."""
    words = line.replace("--num_processes 4", "--num_processes 2").replace("--nproc_per_node 4",
                                                                          "--nproc_per_node 2").split()
    port = str(free_port())
    if words[:2] == ["accelerate", "launch"]:
        return [*words[:2], "--main_process_port", port, "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", *words[2:]]
    if words[0] == "torchrun":
        return [words[0], "--master_port", port, *words[1:]]
    raise AssertionError(f"unexpected launch line {line!r}")


def test_the_readmes_accelerate_line_trains_what_one_process_trains_through_a_checkpoint_and_resume(
        one_process, tmp_path):
    line = next(line for line in readme_launch_lines() if line.startswith("accelerate launch"))
    command = two_processes(line)
    run([*command, *SMALL, "--batch_size", "2", "--max_steps", "2"], tmp_path)
    assert len(losses(tmp_path / "runs" / "ddp")) == 2
    run([*command, *SMALL, "--batch_size", "2", "--max_steps", "4", "--resume"], tmp_path)
    assert_same_run(tmp_path / "runs" / "ddp", one_process)


def test_the_readmes_torchrun_line_trains_what_one_process_trains(one_process, tmp_path):
    line = next(line for line in readme_launch_lines() if line.startswith("torchrun"))
    run([*two_processes(line), *SMALL, "--batch_size", "2", "--max_steps", "4"], tmp_path)
    assert_same_run(tmp_path / "runs" / "ddp", one_process)


def test_the_slurm_script_on_two_nodes_trains_what_one_process_trains(one_process, tmp_path):
    """The README's sbatch line, its script run as SLURM would on two nodes of one CPU process each: a
    stand-in ``srun`` starts the script's command once per node (both here, on localhost), a stand-in
    ``scontrol`` names the head node; torchrun's c10d rendezvous joins them."""
    line = next(line for line in readme_launch_lines() if line.startswith("sbatch"))
    script = ROOT / line.split()[1]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\nfor node in $(seq "$SLURM_NNODES"); do "$@" & done\nwait -n && wait -n\n')
    (fake / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    env = {"PATH_FIRST": str(fake), "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost",
           "GPUS_PER_NODE": "1", "MASTER_PORT": str(free_port())}
    run(["bash", str(script), *SMALL, "--batch_size", "2", "--max_steps", "4"], tmp_path, env)
    assert_same_run(tmp_path / "runs" / "slurm-4242", one_process)


def test_evaluation_shared_by_two_processes_writes_the_single_processs_table(one_process, tmp_path):
    """Greedy generation split batch by batch between two processes and gathered in order: the same
    reports and the same table as one process (a batch decoded as one process would, padding included)."""
    common = ["-m", "flamingo_lib.cli.evaluate_on", str(one_process), "--data", "phantom:templated", "--max-samples",
              "10", "--max-new-tokens", "8", "--no-progress", "--no-feature-cache"]
    run([sys.executable, *common, "--out", str(tmp_path / "one")], ROOT)
    run(["torchrun", "--master_port", str(free_port()), "--nproc_per_node", "2", *common, "--out",
         str(tmp_path / "two")], ROOT)
    for name in ("generations.jsonl", "results.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name


SHARED_GENERATION = """
import json, sys, torch
from types import SimpleNamespace
from flamingo_lib.inference.batched import generate_in_batches, process_share

class Model(torch.nn.Module):  # writes which film it saw, and which process decoded it
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(findings_head=None)

    def generate_captions(self, processor, images, prompt, max_length, **kwargs):
        return [f"{views[0]}@{process_share()[0]}" for views in images]

samples = [SimpleNamespace(images=[f"film-{i}"]) for i in range(11)]
processor = SimpleNamespace(study_inputs=lambda sample: SimpleNamespace(images=sample.images, prompt="Findings:"))
reports = generate_in_batches(Model(), processor, samples, batch_size=3, progress=False).reports
rank = process_share()[0]
json.dump(reports, open(sys.argv[1] + f".{rank}", "w"))
"""


def test_a_shared_generation_gathers_every_batch_in_order_on_every_process(tmp_path):
    script = tmp_path / "shared.py"
    script.write_text(SHARED_GENERATION)
    run(["torchrun", "--master_port", str(free_port()), "--nproc_per_node", "2", str(script), str(tmp_path / "out")],
        ROOT)
    # batches of 3: the first, third and fifth decoded by process 0, the second and fourth by process 1
    owner = [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    expected = [f"film-{i}@{owner[i]}" for i in range(11)]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"out.{rank}").read_text()) == expected
