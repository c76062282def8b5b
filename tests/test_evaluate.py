"""FID evaluation end to end: npz streaming, sharded features, reference statistics, the CLI,
bad inputs, and FID logged during training.

The Inception weights are pytorch-fid's network with random weights and calibrated batch norms
(tests/fid_oracle.py), saved as a .pth and loaded through the real `inception.load_params`
path; nothing is downloaded. Feature parity with pytorch-fid is tests/test_inception.py's job and
the metrics' formulas are tests/test_evaluation_metrics.py's; here the plumbing is checked
against the one-shot computation and against what FID must do (0 for a set against itself,
small between halves of a dataset, large against noise).
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from configs import digits
from dit_jax import config_checks, downloads, evaluate, sample_outputs, sharding, sweep, train
from dit_jax.evaluation import features, inception, npz_images, reference, scores
import fid_oracle  # tests/ is on sys.path (pytest rootdir-relative conftest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM = 32  # images per set: enough for FID to separate the cases, cheap on 2 CPU cores


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "inception.pth"
  torch.save(fid_oracle.build_model().state_dict(), path)
  return str(path)


@pytest.fixture(scope="module")
def params(weights_file):
  return inception.load_params(weights_file)


@pytest.fixture(scope="module")
def digit_images():
  """The first 2 * NUM scikit-learn digits as uint8 (8, 8, 1), as the sampler would write them."""
  images = reference.SourceImages(dict(source="digits", image_size=8), 2 * NUM)
  assert images.shape == (2 * NUM, 8, 8, 1)
  return images.read(0, 2 * NUM)


@pytest.fixture(scope="module")
def first_reference(params, digit_images):
  """The reference statistics of the first NUM digits (8 devices, batches of 16), computed once
  for the tests that score the second half against them."""
  return reference.Reference.from_features(
      features.extract_from(digit_images[:NUM], params, batch_size=16))


@pytest.fixture(scope="module")
def second_features(params, digit_images):
  """The features of the second NUM digits, as ``first_reference``'s."""
  return features.extract_from(digit_images[NUM:], params, batch_size=16)


def test_npz_images_reads_rows_of_savez_writer_and_compressed_files(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (10, 5, 6, 3), dtype=np.uint8)
  np.savez(tmp_path / "a.npz", images, labels=np.arange(10))
  with sample_outputs.NpzWriter(str(tmp_path / "b.npz"), images.shape, np.arange(10)) as writer:
    writer.write(images[:4])
    writer.write(images[4:])
  np.savez_compressed(tmp_path / "c.npz", images)
  for name in ("a", "b", "c"):
    reader = npz_images.NpzImages(str(tmp_path / f"{name}.npz"))
    assert reader.shape == images.shape and reader.dtype == np.uint8
    np.testing.assert_array_equal(reader.read(3, 8), images[3:8])
  assert isinstance(npz_images.NpzImages(str(tmp_path / "a.npz"))._array, np.memmap)
  data = (tmp_path / "a.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="not a readable npz"):
    npz_images.NpzImages(str(tmp_path / "cut.npz"))
  np.savez(tmp_path / "nolabels.npz", labels=np.arange(3))
  with pytest.raises(ValueError, match=r"has no images \('arr_0'\); its arrays are \['labels'\]"):
    npz_images.NpzImages(str(tmp_path / "nolabels.npz"))


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 8, 8, 3), np.float32), "dtype float32"),
    (np.zeros((4, 8, 8, 4), np.uint8), "4 channels"),
    (np.zeros((0, 8, 8, 3), np.uint8), "no images"),
    (np.zeros((4, 8, 8), np.uint8), r"is not \(N, H, W, C\)"),
])
def test_bad_samples_are_named_before_any_weights_load(tmp_path, array, message):
  np.savez(tmp_path / "s.npz", array)
  np.savez(tmp_path / "r.npz", mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError, match=message) as err:
    evaluate.evaluate_files(str(tmp_path / "s.npz"), str(tmp_path / "r.npz"),
                            inception_weights=str(tmp_path / "absent.pth"))
  assert str(tmp_path / "s.npz") in str(err.value)


def test_bad_references_and_weights_are_named(tmp_path, weights_file):
  np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
  samples = str(tmp_path / "s.npz")
  np.savez(tmp_path / "stats_only_mu.npz", mu=np.zeros(3))
  np.savez(tmp_path / "empty.npz", labels=np.arange(3))
  for name, message in [("stats_only_mu", "only one of 'mu' and 'sigma'"),
                        ("empty", r"neither images \('arr_0'\) nor statistics")]:
    with pytest.raises(ValueError, match=message):
      evaluate.evaluate_files(samples, str(tmp_path / f"{name}.npz"))
  np.savez(tmp_path / "r.npz", mu=np.zeros(3), sigma=np.eye(3))
  truncated = tmp_path / "cut.pth"
  truncated.write_bytes(open(weights_file, "rb").read()[:100_000])
  with pytest.raises(ValueError, match=r"it is truncated or not a \.pth\. Delete it"):
    evaluate.evaluate_files(samples, str(tmp_path / "r.npz"), inception_weights=str(truncated))
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="--output .*cannot create the directory"):
    evaluate.evaluate_files(samples, str(tmp_path / "r.npz"),
                            output=str(tmp_path / "file" / "m.json"))


def test_features_equal_one_shot_on_1_and_8_devices(params, devices):
  images = np.random.default_rng(1).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
  direct = jax.device_get(inception.extract_features(params, images))
  one = sharding.create_mesh({"data": -1}, devices[:1])
  for mesh, batch in ((one, 5), (sharding.create_mesh({"data": 2, "fsdp": 4}, devices), 8)):
    feats = features.extract_from(images, params, mesh=mesh, batch_size=batch)  # last batch padded
    for key, got in (("pool", feats.pool), ("logits", feats.logits)):  # XLA's CPU convolutions
      scale = np.abs(direct[key]).max()  # round differently for other batch sizes: ~1e-6
      np.testing.assert_allclose(got, direct[key], rtol=0, atol=1e-5 * scale)
    for stats, key in ((feats.pool_stats, "pool"), (feats.spatial_stats, "spatial")):
      mu, sigma = stats.mean_cov()
      np.testing.assert_allclose(mu, direct[key].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(sigma, np.cov(direct[key].astype(np.float64), rowvar=False),
                                 rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="not a multiple of the 8 devices"):
    features.extract_from(images, params, batch_size=12)


@pytest.mark.slow
def test_fid_is_small_between_halves_of_the_digits_and_large_for_noise(params, first_reference,
                                                                      second_features):
  """(A set against itself scores ~0: the CLI test.)"""
  noise = np.random.default_rng(2).integers(0, 256, (NUM, 8, 8, 1), dtype=np.uint8)
  between_halves = scores.score(second_features, first_reference)
  against_noise = scores.score(features.extract_from(noise, params, batch_size=16),
                               first_reference)
  assert against_noise["fid"] > 5 * between_halves["fid"] > 0
  assert against_noise["sfid"] > between_halves["sfid"] > 0
  assert 0 <= against_noise["precision"] <= 1 and 0 <= between_halves["recall"] <= 1
  assert 1.0 <= between_halves["inception_score"] < NUM


def test_reference_file_roundtrip_adm_keys_and_cache(tmp_path, params, digit_images,
                                                    first_reference, monkeypatch):
  monkeypatch.setenv(downloads.CACHE_ENV, str(tmp_path / "cache"))
  images = digit_images[:NUM]
  np.savez(tmp_path / "adm_like.npz", images)  # images only: everything computed, then cached
  first = reference.load_reference(str(tmp_path / "adm_like.npz"), params, batch_size=16)
  assert len(os.listdir(tmp_path / "cache")) == 1
  for key in ("mu", "sigma", "mu_s", "sigma_s", "pool"):  # the same images, read from memory
    np.testing.assert_array_equal(getattr(first, key), getattr(first_reference, key))
  again = reference.load_reference(str(tmp_path / "adm_like.npz"), params)  # from the cache
  np.testing.assert_array_equal(again.sigma, first.sigma)
  np.testing.assert_array_equal(again.pool, first.pool)
  # ADM's batches carry their own statistics: those are used as stored.
  np.savez(tmp_path / "with_stats.npz", images, mu=first.mu + 1.0, sigma=first.sigma,
           mu_s=first.mu_s, sigma_s=first.sigma_s)
  adm = reference.load_reference(str(tmp_path / "with_stats.npz"), params, batch_size=16)
  np.testing.assert_array_equal(adm.mu, first.mu + 1.0)
  np.testing.assert_allclose(adm.pool, first.pool)
  first_reference.save(str(tmp_path / "made.npz"))  # make_reference's writer (it: the CLI test)
  with np.load(tmp_path / "made.npz") as f:
    assert set(f.files) == {"mu", "sigma", "mu_s", "sigma_s", "pool", "num_images"}
    assert f["sigma"].shape == (2048, 2048) and f["sigma_s"].shape == (2023, 2023)
  stats_only = reference.load_reference(str(tmp_path / "made.npz"))  # no images: no weights needed
  assert stats_only.num_images == NUM
  np.testing.assert_allclose(stats_only.sigma, first_reference.sigma)


@pytest.mark.slow
def test_cli_make_reference_then_evaluate(tmp_path, weights_file, digit_images):
  """The two commands of the README's Evaluate section on 32 digits, as subprocesses."""
  ref, out = tmp_path / "ref.npz", tmp_path / "metrics.json"
  env = dict(os.environ, DIT_JAX_CACHE=str(tmp_path / "cache"))
  subprocess.run([sys.executable, "-m", "dit_jax.evaluate", f"--make_reference={ref}",
                  "--data=digits", f"--num_images={NUM}", f"--inception_weights={weights_file}"],
                 cwd=ROOT, env=env, check=True, capture_output=True)
  with sample_outputs.NpzWriter(str(tmp_path / "s.npz"), (NUM, 8, 8, 1), np.zeros(NUM, np.int32)) as w:
    w.write(digit_images[:NUM])
  proc = subprocess.run(
      [sys.executable, "-m", "dit_jax.evaluate", f"--samples={tmp_path / 's.npz'}",
       f"--reference={ref}", f"--inception_weights={weights_file}", f"--output={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert json.loads(proc.stdout[proc.stdout.index("{"):]) == result
  with np.load(ref) as stats:  # the same images as the reference: ~0 on the scale of the traces
    assert abs(result["fid"]) < 1e-9 * np.trace(stats["sigma"])
    assert abs(result["sfid"]) < 1e-9 * np.trace(stats["sigma_s"])
  assert result["precision"] == result["recall"] == 1.0
  assert result["num_samples"] == result["num_reference"] == NUM
  assert result["devices"] == 8 and result["versions"]["jax"] == jax.__version__  # conftest's 8
  bad = subprocess.run([sys.executable, "-m", "dit_jax.evaluate", f"--samples={ref}",
                        f"--reference={ref}"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  assert f"dit_jax.evaluate: {ref} has no images ('arr_0')" in bad.stderr


@pytest.mark.slow
def test_training_logs_fid_and_the_sweep_collects_it(tmp_path, weights_file, first_reference):
  ref = tmp_path / "ref.npz"
  first_reference.save(str(ref))
  config = digits.get_config("smoke")
  config.eval.update(every_steps=10, num_samples=16, reference=str(ref),
                     inception_weights=weights_file, num_sampling_steps=5, batch_size=16)
  workdir = str(tmp_path / "run")
  train.train(config, workdir)
  scalars = sweep.read_scalars(workdir)
  for name in ("fid", "sfid", "is", "precision", "recall"):
    assert [step for step, _ in scalars[f"eval/{name}"]] == [10, 20], name
  assert all(np.isfinite(v) and v > 0 for _, v in scalars["eval/fid"])
  row = sweep.collect(dict(config="configs/digits.py:smoke", fixed=dict(
      num_train_steps=20, **{f"eval.{k}": v for k, v in config.eval.items()}), axes=[]),
      sweep.Run("smoke", {}), workdir)
  assert row["fid"] == scalars["eval/fid"][-1][1]


def test_eval_config_problems_are_named(tmp_path):
  from dit_jax.evaluation import during_training
  config = digits.get_config("smoke")
  assert during_training.check_config(config) == []  # off by default
  config.eval.update(every_steps=5, num_samples=1, reference=str(tmp_path / "none.npz"),
                     cfg_scale=float("nan"))
  problems = "\n".join(during_training.check_config(config))
  for needle in ("config.eval.num_samples=1 must be >= 2", "config.eval.reference=",
                 "does not exist", "config.eval.cfg_scale=nan"):
    assert needle in problems
  config.eval.update(num_samples=16, reference=str(tmp_path / "none.npz"), cfg_scale=1.0)
  with pytest.raises(config_checks.ConfigError, match=r"config.eval.reference=.*does not exist"):
    config_checks.validate(config, num_devices=8)
  np.savez(tmp_path / "ref.npz", mu=np.zeros(3), sigma=np.eye(3))
  config.eval.update(reference=str(tmp_path / "ref.npz"), sampler="euler")
  with pytest.raises(config_checks.ConfigError, match="config.eval.sampler='euler' does not go with"):
    config_checks.validate(config, num_devices=8)
  config.eval.sampler = "ddim"
  config_checks.validate(config, num_devices=8)


@pytest.mark.slow
def test_two_processes_score_as_one(tmp_path, weights_file, digit_images, first_reference,
                                    second_features):
  """Two processes x 4 devices (jax.distributed on 127.0.0.1), each reading its rows of the npz,
  give the one-process numbers (the second half's features scored against the first's)."""
  ref, samples = tmp_path / "ref.npz", tmp_path / "s.npz"
  first_reference.save(str(ref))
  np.savez(samples, digit_images[NUM:])
  want = scores.score(second_features, first_reference)
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             DIT_JAX_CACHE=str(tmp_path / "cache"))
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dit_jax.evaluate", f"--samples={samples}", f"--reference={ref}",
       f"--inception_weights={weights_file}", "--batch_size=16", f"--output={tmp_path}/m{i}.json",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    for proc in procs:
      _, err = proc.communicate(timeout=600)
      assert proc.returncode == 0, err[-3000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  got = json.loads((tmp_path / "m0.json").read_text())
  assert not (tmp_path / "m1.json").exists()  # process 0 writes
  assert got["devices"] == 8 and got["num_samples"] == NUM
  for name in scores.SCORE_NAMES:
    assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9), name


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
