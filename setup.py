"""CapsFusion-style LMM pretraining at data-scaling-study scale."""
from setuptools import find_packages, setup

setup(
    name="lmm-scaling",
    version="0.1.0",
    description="EVA-CLIP + causal bridge + LLaMA pretraining with DeepSpeed, webdataset and CIDEr eval",
    python_requires=">=3.10",
    packages=find_packages(include=["lmm", "lmm.*", "data_pipeline", "data_pipeline.*", "launch", "launch.*"]),
    package_data={"lmm.models": ["open_clip_configs/*.json"]},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "deepspeed>=0.16",
        "transformers>=4.46",
        "accelerate>=1.1.0",  # transformers' DeepSpeed ZeRO-3 integration (HfDeepSpeedConfig)
        "webdataset>=0.2.90",
        "open_clip_torch>=2.26",
        "timm>=1.0",
        "sentencepiece",
        "tensorboard",
        "submitit",
        "pycocoevalcap",
        "matplotlib",
        "numpy",
        "scipy",
        "pillow",
        "pyyaml",
        "safetensors",
        "pyarrow",
        "tqdm",
    ],
    extras_require={"dev": ["pytest"]},
    entry_points={"console_scripts": [
        "lmm-pretrain=launch.pretrain:main",
        "lmm-evaluate=launch.evaluate:main",
        "lmm-plot=launch.plot:main",
        "lmm-demo=launch.demo:main",
        "lmm-plan=launch.plan:main",
        "lmm-export=launch.export:main",
        "lmm-submit=launch.submit:main",
        "lmm-prepare=data_pipeline.prepare:main",
    ]},
)
