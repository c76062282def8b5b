"""Text conditioning end to end (issue 16): the model's own text encoder, guidance on the caption,
prompts in and out of the sample command, and the digit-pairs default learning to read them.

References are independent of the code under test:
- A DiT with its own T5 encoder equals the stand-alone Flax T5 encoder (same weights) followed by
  the DiT on its embeddings; padded token ids change nothing.
- Classifier-free guidance on a caption equals uncond + s (cond - uncond) computed by hand from
  two plain model calls (the caption, and the null text: y = num_classes).
- The digit-pairs default, briefly trained, denoises captioned test canvases better than an
  untrained model, judged by the pair metric (a digit classifier on each half agrees with the
  caption) and the error; the sample command writes (N, 8, 16, 1) uint8 samples with their
  prompts.
"""
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

import brief_training  # tests/ is on sys.path
from configs import digit_pairs as digit_pairs_config
from dit_jax import checkpoint, pair_quality, sample, sharding, text, train
from dit_jax import train_state as ts
from dit_jax.data import digit_pairs as digit_pairs_data
from dit_jax.diffusion import guidance
from dit_jax.models import t5
from dit_jax.models.dit import DiT, init_inputs, model_kwargs_for_init

# 200 steps of 32 clear both thresholds below (measured 2026-11-27 with the default's velocity
# target and text positions, trained / untrained: one-step denoising error 0.158 / 0.384, pair
# accuracy 0.71 / 0.36; without positions 0.161 and 0.67; with the noise target 0.183 / 0.432
# and 0.60 / 0.46; the test: 55 s on the 2-core machine alone). With 2 x 2 patches (noise target) the same run scored 0.194 and 0.60, 150 steps of
# 64 0.57 and 100 of 128 0.51 (too little).
BRIEF_STEPS = 200
BATCH = 32
NUM_SAMPLES = 8
SAMPLING = dict(sampler="ddim", num_steps=10, cfg_scale=1.0)


def _text_model(**overrides):
  kw = dict(input_size=8, input_width=16, patch_size=2, in_channels=1, hidden_size=32, depth=2,
            num_heads=2, num_classes=1, block_type="cross_attention", context_dim=32,
            context_length=6, text_vocab_size=23, text_encoder_layers=1)
  return DiT(**{**kw, **overrides})


def _random_params(model, seed=0):
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model),
                                               **model_kwargs_for_init(model)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype),
                      nn.unbox(abstract)["params"])


def _inputs(batch=3):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((batch, 8, 16, 1)).astype(np.float32)
  ids = rng.integers(3, 23, (batch, 6)).astype(np.int32)
  mask = np.arange(6)[None] < np.array([6, 3, 1])[:, None]
  return x, np.array([5, 500, 900]), np.zeros(batch, np.int32), ids, mask


@pytest.mark.parametrize("block_type,positions", [("cross_attention", False), ("mmdit", False),
                                                  ("cross_attention", True)])
def test_own_text_encoder_is_t5_then_the_dit(block_type, positions):
  model = _text_model(block_type=block_type, text_positions=positions)
  params = _random_params(model)
  x, t, y, ids, mask = _inputs()
  out = model.apply({"params": params}, x, t, y, context=ids, context_mask=mask)
  encoder = t5.T5Encoder(vocab_size=23, d_model=32, d_kv=32, d_ff=64, num_layers=1, num_heads=1,
                         feed_forward_proj="gated-gelu", absolute_positions=6 if positions else 0)
  assert ("position_embedding" in params["text_encoder"]) == positions
  embeddings = encoder.apply({"params": params["text_encoder"]}, ids, mask)
  plain = model.clone(text_vocab_size=0, text_positions=False)
  rest = {k: v for k, v in params.items() if k != "text_encoder"}
  want = plain.apply({"params": rest}, x, t, y, context=embeddings, context_mask=mask)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  padded = np.where(mask, ids, 7)  # other ids at the padded positions
  again = model.apply({"params": params}, x, t, y, context=padded, context_mask=mask)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(out))


def test_guidance_on_the_caption_is_the_hand_combination():
  model = _text_model(block_type="mmdit")
  params = _random_params(model, seed=3)
  x, t, y, ids, mask = _inputs()

  def model_fn(x, t, y, context, context_mask):
    return model.apply({"params": params}, x, t, y, context=context, context_mask=context_mask)

  guided = guidance.guided_model_fn(model_fn, 3.0, null_label=1, guidance_channels=None)
  out = guided(x, t, y=y, context=ids, context_mask=mask)
  cond = model_fn(x, t, y, ids, mask)
  uncond = model_fn(x, t, np.ones_like(y), ids, mask)
  np.testing.assert_allclose(out[..., :1], uncond[..., :1] + 3.0 * (cond[..., :1] - uncond[..., :1]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[..., 1:], cond[..., 1:], rtol=1e-5, atol=1e-5)  # unguided


def test_prompt_files_and_mismatched_requests_are_refused(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty.txt is empty"):
    text.read_prompts(str(tmp_path / "empty.txt"))
  (tmp_path / "gap.txt").write_text("a 3 to the left of a 7\n\n3 then 7\n")
  with pytest.raises(ValueError, match=r"line\(s\) \[2\] are empty"):
    text.read_prompts(str(tmp_path / "gap.txt"))
  (tmp_path / "ok.txt").write_text("a 3 to the left of a 7\r\n 3 then 7 \n")
  assert text.read_prompts(str(tmp_path / "ok.txt")) == ["a 3 to the left of a 7", "3 then 7"]
  config = digit_pairs_config.get_config("smoke")
  config.text.max_length = 4
  with pytest.raises(ValueError, match="config.text.tokenizer is empty"):
    text.tokenize(dict(tokenizer="", max_length=4), ["3 then 7"])
  ids, mask = text.tokenize(config.text, ["a 3 to the left of a 7"])
  assert ids.shape == (1, 4) and mask.all()  # truncated, with a warning (text_vocab's tests)


def denoised_pair_scores(config, params, canvases, prompts):
  """Pair quality and MSE of test canvases denoised in one step (brief_training) by a model
  that reads ``prompts`` (their captions)."""
  context, mask = text.encode_prompts(config, prompts)
  denoised = brief_training.one_step_denoised(config, params, canvases,
                                              np.zeros(len(canvases), np.int32),
                                              context=context, context_mask=mask)
  scores = pair_quality.prompts_quality(denoised, prompts)
  return dict(scores, mse=float(np.mean((denoised - canvases) ** 2)))


@pytest.mark.slow
def test_briefly_trained_text_default_learns(tmp_path):
  """A brief run cannot draw the pairs yet (the default needs 2,000 steps of 128: README "Text
  conditioning"), so learning is judged on the denoiser: test canvases noised to t = 250 and
  denoised in one step, reading their captions, come back closer to the originals and with more
  halves classified as the caption says than an untrained model (v = 0: the noisy canvas
  scaled by sqrt(abar))."""
  config = brief_training.brief_config(digit_pairs_config.get_config(), BRIEF_STEPS, 20,
                                       batch_size=BATCH)
  one_device = jax.devices()[:1]
  workdir = tmp_path / "run"
  train.train(config, str(workdir), devices=one_device)
  out = tmp_path / "out"
  prompts = ["a 3 to the left of a 7", "a 7 to the right of a 3", "1 then 8", "8 then 1"]
  with pytest.raises(ValueError, match="text-conditioned model: pass --prompts"):
    sample.sample_to_files(str(workdir), num_samples=4, output=str(out / "none.npz"), **SAMPLING)
  scores = sample.sample_to_files(str(workdir), num_samples=NUM_SAMPLES, prompts=prompts,
                                  output=str(out / "s.npz"), **SAMPLING)
  with np.load(out / "s.npz") as npz:
    assert npz["arr_0"].shape == (NUM_SAMPLES, 8, 16, 1) and npz["arr_0"].dtype == np.uint8
    assert list(npz["prompts"]) == [prompts[i % 4] for i in range(NUM_SAMPLES)]
    assert pair_quality.prompts_quality(npz["arr_0"], list(npz["prompts"])) == scores
  assert scores == json.loads((out / "s_quality.json").read_text())

  source = digit_pairs_data.DigitPairsSource(split="test")
  examples = [source[i] for i in range(0, len(source), len(source) // 100)][:100]
  canvases = np.stack([e["x"] for e in examples])
  captions = [digit_pairs_data.caption(int(e["left"]), int(e["right"]), "and") for e in examples]
  _, params = checkpoint.restore_ema_params(str(workdir))
  mesh = sharding.create_mesh({"data": -1}, one_device)
  untrained_params = jax.device_get(ts.init_train_state(config, mesh, jax.random.key(0)).ema_params)
  trained = denoised_pair_scores(config, params, canvases, captions)
  untrained = denoised_pair_scores(config, untrained_params, canvases, captions)
  assert trained["mse"] < 0.5 * untrained["mse"], (trained, untrained)
  assert trained["pair_accuracy"] > untrained["pair_accuracy"] + 0.05, (trained, untrained)
