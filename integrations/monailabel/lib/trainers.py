"""Training of one zoo bundle from the studies MONAI Label holds."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, create_workflow
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from common.data.brats import BratsConvention
from lib.infers import brats_case, brats_modalities, image_dimension

logger = logging.getLogger(__name__)

#: File endings of the images a bundle of each dimension reads (what MONAI's readers take as 2D or 3D images).
IMAGE_ENDINGS = {2: (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"), 3: (".nii", ".nii.gz", ".nrrd", ".mha")}

#: Why a zoo bundle is not offered as a trainer: its recipe needs more than images with their label maps.
NOT_TRAINABLE = {
    "mtcm_kd_t1ce_student": "MTCM-KD trains three teachers and the student together from a BraTS split file "
    "(teacher weights from their validation Dice); train it with `python -m monai.bundle run` on a BraTS folder",
    "refnet_synapse": "RefNet trains on the out-of-fold predictions of K base models (two stages); train it with "
    "`python -m monai.bundle run` on a BTCV folder as its README says",
}


def _inference_config(bundle_path: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_path) / "configs" / "inference.json"))
    parser["bundle_root"] = bundle_path
    return parser


class ZooTrainTask(BundleTrainTask):
    """MONAI Label's bundle training task, made honest for the zoo's bundles.

    - The bundle's schedule is fitted to the epochs asked for (``epochs``, and ``warmup_epochs`` scaled with it):
      MONAI Label sets the trainer's ``max_epochs`` alone, which would leave a 570-epoch cosine schedule with 70
      warm-up epochs to a 10-epoch fine-tuning run.
    - The last epoch is always validated (:class:`common.engines.validation.ValidateAtEnd`), so a run shorter
      than the bundle's validation interval still judges its model and saves ``models/model.pt`` when it is better.
    - Epoch checkpoints, which exist to resume an interrupted run, go to a temporary folder that is removed at the
      end: the model folder keeps ``model.pt`` only.
    - BraTS studies are four files (:class:`lib.infers.BratsCaseFilesd`); a BraTS bundle reads the label maps in
      the server's label convention, the one ``/info/`` names and inference writes.
    - ``train_stats`` reports the last run: epochs, time, best metric and the epoch it was reached.
    """

    def __init__(self, path: str, conf: dict[str, str], convention: BratsConvention) -> None:
        super().__init__(path, conf)
        self.convention = convention
        self.modalities = brats_modalities(self.bundle_config) if self.valid else None
        self.dimension = image_dimension(_inference_config(path)) if self.valid else None
        self.stats_file = Path(path) / "eval" / "train_stats.json"

    def stats(self) -> dict[str, Any]:
        if not self.stats_file.is_file():
            return {}
        return json.loads(self.stats_file.read_text())

    def _fetch_datalist(self, request: dict, datastore: Datastore) -> list[dict]:
        """The labelled studies this bundle reads; one server's studies folder may hold other bundles' studies."""
        items = super()._fetch_datalist(request, datastore)
        readable = [self._as_training_item(item) for item in items]
        readable = list({str(item["image"]): item for item in readable if item is not None}.values())
        if len(readable) < len(items):
            logger.info(f"{Path(self.bundle_path).name}: training on {len(readable)} of {len(items)} labelled "
                        "studies; the others are images it does not read")  # fmt: skip
        return readable

    def _as_training_item(self, item: dict) -> dict | None:
        image = str(item["image"])
        if self.modalities is None:
            return item if image.lower().endswith(IMAGE_ENDINGS[self.dimension]) else None
        files = brats_case(image, self.modalities)  # a BraTS study is any one modality of a case
        return None if files is None else {**item, "image": files}

    def _update_overrides(self, overrides: dict) -> dict:
        epochs = int(overrides[self.const.key_train_trainer_max_epochs()])
        config = self.bundle_config
        overrides["epochs"] = epochs
        if "warmup_epochs" in config:
            overrides["warmup_epochs"] = round(config["warmup_epochs"] * epochs / config["epochs"])
        if self.modalities is not None:
            overrides["et_label"] = self.convention.et_label
        overrides[self.const.key_train_handlers()] = [
            *overrides[self.const.key_train_handlers()],
            {"_target_": "common.engines.validation.ValidateAtEnd", "validator": "@validate#evaluator",
             "interval": "@val_interval"},
        ]  # fmt: skip
        return overrides

    def run_single_gpu(self, request: dict, overrides: dict) -> None:
        epoch_checkpoints = tempfile.mkdtemp(prefix="epoch_checkpoints_")
        overrides = {**overrides, "train#checkpoint_saver#save_dir": epoch_checkpoints}
        started = time.time()
        try:
            workflow = create_workflow(
                config_file=self.bundle_config_path,
                meta_file=self.bundle_metadata_path,
                init_id=None,
                run_id=request.get("run_id", "run"),
                final_id=None,
                **overrides,
            )
            workflow.run()
            self._write_stats(workflow.parser, started)
        finally:
            shutil.rmtree(epoch_checkpoints, ignore_errors=True)

    def _write_stats(self, parser: Any, started: float) -> None:
        trainer = parser.get_parsed_content("train#trainer")
        evaluator = parser.get_parsed_content("validate#evaluator")
        stats = {
            "total_time": round(time.time() - started, 1),
            "epochs": trainer.state.epoch,
            "iterations": trainer.state.iteration,
            "key_metric": evaluator.state.key_metric_name,
            "best_metric": evaluator.state.best_metric,
            "best_metric_epoch": evaluator.state.best_metric_epoch,
            "last_metrics": {k: float(v) for k, v in evaluator.state.metrics.items()},
            "model": str(Path(self.bundle_path) / "models" / "model.pt"),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        self.stats_file.write_text(json.dumps(stats, indent=2))
        logger.info(f"train stats: {stats}")
