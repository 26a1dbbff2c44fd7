"""Install sideways_tf: `pip install -e .[test]`."""

import setuptools

setuptools.setup(
    name="sideways_tf",
    version="0.1.0",
    description="Sideways and Skip-Sideways: depth-parallel training of video models in TF/Keras.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["sideways_tf", "sideways_tf.*"]),
    # The gin configs ship inside the package (sideways_tf/configs), found by name.
    package_data={"sideways_tf": ["configs/*.gin", "configs/*/*.gin"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.3",
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.16",
        "gin-config>=0.5",
        "numpy>=1.26",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6",
            "ruff>=0.6",
            "av>=12",
            "matplotlib>=3.8",
            "jax>=0.4.30",  # the JAX suite (make test) and tests/test_backends.py
        ],
        # KERAS_BACKEND=jax: the engine, the modes, SidewaysModel, benchmarks/accelerator.py
        # (pip install jax[cuda12] for a GPU). TensorFlow is still needed for tf.data, the
        # gin run path, checkpoints and the SavedModel export.
        "jax": ["jax>=0.4.30"],
        "video": ["av>=12"],
        "tpu": ["google-cloud-storage>=2.10"],
        "plots": ["matplotlib>=3.8"],
        # benchmarks/future_unseen.py: scikit-image's sample photographs (never imported by
        # sideways_tf itself) and PyAV to write the videos.
        "unseen": ["scikit-image>=0.22", "av>=12"],
    },
    entry_points={
        "console_scripts": [
            "sideways-train=sideways_tf.cli:train_main",
            "sideways-eval=sideways_tf.cli:eval_main",
            "sideways-export=sideways_tf.cli:export_main",
            "sideways-convert=sideways_tf.data.prepare.convert:main",
        ]
    },
)
