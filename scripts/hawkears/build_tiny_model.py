#!/usr/bin/env python3
"""Build a tiny, random-weight HawkEars data root for tests and demos (offline, seconds).

Runs INSIDE the HawkEars environment (``make hawkears-tiny`` calls it with that env's python).
The checkpoints are in the real HawkEars 2.x format (britekit ``hgnet.1`` + ``basic_sed`` head,
Lightning checkpoints) but their weights are random: every score is near 0.77 and detections are
MEANINGLESS. The data root is laid out by HawkEars' own ``initialize(dest, downloader=...)`` with
a downloader that copies these local checkpoints instead of downloading release bundles, and is
marked with ``TINY_MODEL_DO_NOT_USE_FOR_SCIENCE`` so every run on it prints a loud banner.

Usage: python scripts/hawkears/build_tiny_model.py DEST [--main N] [--low-band N] [--force]
Idempotent: an existing complete DEST (marker present) is left alone unless --force.
Atomic: built in a sibling temporary folder, then renamed into place.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

MARKER = "TINY_MODEL_DO_NOT_USE_FOR_SCIENCE"
LOW_BAND_CLASSES = (
    ("Noise", "Noise", "Noise", "noise"),
    ("Ruffed Grouse", "RUGR", "Bonasa umbellus", "rufgro"),
    ("Spruce Grouse", "SPGR", "Canachites canadensis", "sprgro"),
)


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _audio_section(resources, yaml_name: str) -> dict:
    from omegaconf import OmegaConf

    with resources.joinpath("yaml", yaml_name).open("r", encoding="utf-8") as handle:
        cfg = OmegaConf.load(handle)
    return OmegaConf.to_container(cfg.audio, resolve=True)  # type: ignore[return-value]


def _main_classes(resources) -> list[tuple[str, str, str, str]]:
    with resources.joinpath("data", "classes.csv").open("r", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [(r["Name"], r["Code"], r["AltName"], r["AltCode"]) for r in rows]


def _save_checkpoint(path: Path, classes, audio: dict, seed: int) -> None:
    import torch
    from britekit.core.config_loader import get_config_with_dict
    from britekit.models.model_loader import load_new_model
    from lightning.pytorch import Trainer

    get_config_with_dict(
        {
            "audio": audio,
            "train": {
                "model_type": "hgnet.1",
                "head_type": "basic_sed",
                "sed_fps": 4,
                "pretrained": False,
            },
        }
    )
    torch.manual_seed(seed)
    names, codes, alt_names, alt_codes = (list(col) for col in zip(*classes, strict=True))
    model = load_new_model(names, codes, alt_names, alt_codes, 0).to("cpu")
    trainer = Trainer(
        max_epochs=0,
        logger=False,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(str(path))


def _silence_lightning() -> None:
    """Lightning logs GPU/TPU availability and tips for every Trainer: not useful here."""
    import logging

    import lightning  # noqa: F401 - creates the loggers we turn down

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning", "pytorch_lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)


def build(dest: Path, n_main: int, n_low_band: int) -> None:
    # Importing hawkears sets BRITEKIT_INFERENCE_ONLY=1 (models become plain nn.Modules that
    # Lightning cannot save): force training mode before any britekit/hawkears import.
    os.environ["BRITEKIT_INFERENCE_ONLY"] = "0"
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # build on CPU, deterministic
    _quiet_libraries()
    _silence_lightning()
    import hawkears
    from hawkears.core.initializer import initialize
    from hawkears.core.package_regions import default_package_region, package_resources

    resources = package_resources(default_package_region())
    main_audio = _audio_section(resources, "default.yaml")
    low_audio = _audio_section(resources, "low_band.yaml")
    classes = _main_classes(resources)

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-building-", dir=dest.parent))
    try:
        ckpts = {"main": work / "_ckpt-main", "low_band": work / "_ckpt-low-band"}
        for folder in ckpts.values():
            folder.mkdir()
        for i in range(n_main):
            _save_checkpoint(ckpts["main"] / f"tiny-main-{i + 1}.ckpt", classes, main_audio, 1000 + i)
        for i in range(n_low_band):
            _save_checkpoint(
                ckpts["low_band"] / f"tiny-low-band-{i + 1}.ckpt",
                LOW_BAND_CLASSES,
                low_audio,
                2000 + i,
            )

        def copy_bundle(url: str, model_dir) -> None:
            source = ckpts["low_band"] if "low-band" in url else ckpts["main"]
            Path(model_dir).mkdir(parents=True, exist_ok=True)
            for ckpt in sorted(source.iterdir()):
                shutil.copy2(ckpt, Path(model_dir) / ckpt.name)

        root = work / "root"
        initialize(root, force=True, downloader=copy_bundle)
        if n_low_band == 0:  # a data root without low-band models: --low-band must fail clearly
            shutil.rmtree(root / "data" / "ckpt-low-band", ignore_errors=True)
        (root / MARKER).write_text(
            "Random-weight checkpoints built by scripts/hawkears/build_tiny_model.py for tests.\n"
            "Every detection made with this data root is MEANINGLESS.\n"
            f"hawkears {hawkears.__version__}; built {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
            f"main models: {n_main}; low-band models: {n_low_band}\n",
            encoding="utf-8",
        )
        if dest.exists():
            shutil.rmtree(dest)
        root.replace(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="data root to create")
    parser.add_argument("--main", type=int, default=3, help="main checkpoints (default 3)")
    parser.add_argument("--low-band", type=int, default=2, help="low-band checkpoints (default 2)")
    parser.add_argument("--force", action="store_true", help="rebuild even if DEST is complete")
    args = parser.parse_args(argv)
    dest = args.dest.expanduser().absolute()
    if (dest / MARKER).is_file() and not args.force:
        print(f"tiny HawkEars data root already built: {dest}")
        return 0
    start = time.monotonic()
    build(dest, args.main, args.low_band)
    print(f"tiny HawkEars data root built in {time.monotonic() - start:.1f} s: {dest}")
    print("  (random weights: detections are MEANINGLESS; for tests and demos only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
