"""The zoo's MONAI Label app: every bundle of the zoo for inference, and those that can train on studies.

    monailabel start_server --app integrations/monailabel --studies <folder> [--conf bundles <folder>]
        [--conf models <name,name,...>] [--conf brats_labels brats2021|brats2023]

- ``bundles``: the folder holding one folder per bundle, e.g. unpacked release zips, each with ``models/model.pt``
  (default: ``model/`` in this app's folder, where MONAI Label keeps an app's models). The repository's own
  ``bundles/`` folder works too once weights are trained.
- ``models``: which of them to serve (default: every bundle folder there).
- ``brats_labels``: the label convention of BraTS label maps, the one ``/info/`` names and the BraTS bundles write
  and train on: ``brats2021`` (1, 2, 4; default) or ``brats2023`` (1, 2, 3).

What this app adds to MONAI Label's ``monaibundle`` sample app is in :mod:`lib.infers`, :mod:`lib.trainers` and
:mod:`lib.server`. The process imports one ``common``: a bundle released with another version of it is refused
(:func:`common.check_common`) and left out, with an ``error:`` line in the log.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from pathlib import Path

if importlib.util.find_spec("common") is None:  # the app runs the common of the checkout it is part of
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import monailabel  # noqa: E402
from lib.infers import ZooInferTask  # noqa: E402
from lib.server import infer_off_the_event_loop  # noqa: E402
from lib.trainers import NOT_TRAINABLE, ZooTrainTask  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402

import common  # noqa: E402
from common.data.brats import BRATS_CONVENTIONS  # noqa: E402

logger = logging.getLogger(__name__)


class ZooApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        convention = conf.get("brats_labels", "brats2021")
        if convention not in BRATS_CONVENTIONS:
            raise ValueError(
                f"error: --conf brats_labels: expected one of {sorted(BRATS_CONVENTIONS)}, got {convention!r}"
            )
        self.convention = BRATS_CONVENTIONS[convention]
        self.bundles = self._bundles(Path(conf.get("bundles") or Path(app_dir) / "model"), conf.get("models", ""))
        self._infer_lock = threading.Lock()
        infer_off_the_event_loop()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI Bundle zoo",
            description="The zoo's bundles: BraTS tumour, Visible Korean bone and muscle, Synapse organs",
            version=monailabel.__version__,
        )

    @staticmethod
    def _bundles(folder: Path, names: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"error: --conf bundles: '{folder}' is not a folder of bundles")
        wanted = [n.strip() for n in names.split(",") if n.strip()] if names and names != "all" else None
        found = {p.name: p for p in sorted(folder.iterdir()) if (p / "configs" / "metadata.json").is_file()}
        missing = [n for n in wanted or [] if n not in found]
        if missing:
            raise FileNotFoundError(f"error: --conf models: no bundle {missing} in '{folder}' (found {sorted(found)})")
        chosen = {n: found[n] for n in wanted} if wanted else found
        usable = {}
        for name, path in chosen.items():
            try:
                common.check_common(path)
            except common.CommonVersionError as error:
                logger.error(f"error: {error}")
                continue
            usable[name] = path
        return usable

    def init_infers(self) -> dict:
        infers = {}
        for name, path in self.bundles.items():
            task = ZooInferTask(str(path), self.conf, self.convention)
            if not task.is_valid():
                logger.error(f"error: {path}: no models/model.pt; train the bundle or download its weights first")
                continue
            infers[name] = task
        return infers

    def init_trainers(self) -> dict:
        trainers = {}
        for name, path in self.bundles.items():
            if name in NOT_TRAINABLE:
                logger.info(f"{name} is not offered for training here: {NOT_TRAINABLE[name]}")
                continue
            task = ZooTrainTask(str(path), self.conf, self.convention)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict:
        return {"random": Random(), "first": First()}

    def infer(self, request, datastore=None):
        # one inference at a time: each already uses every core, and the tasks keep per-model state
        with self._infer_lock:
            return super().infer(request, datastore)
