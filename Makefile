# `make demo` and `make test` are the two commands a person needs. Both set up .venv first and are idempotent:
# the venv is rebuilt only when a requirements file changes, and synthetic data are reused when already there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup test test-integration test-slow bench bench-full study-crossval study-kd demo verify package lint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The default tier: tiny shapes, well under 30 minutes on 2 CPU cores. `.ci/run` calls exactly this.
test: setup
	$(PY) -m pytest

# Every bundle through the outside tools users take it to: release download, ONNX Runtime, torchrun (gloo),
# MLflow, MONAI Label, MONAI Deploy. `.ci/run` calls this after `make test`.
test-integration: setup
	$(PY) -m pytest -m integration

# The MONAI Deploy App SDK in an environment of its own (requirements-deploy.txt says why), for the zoo's Deploy
# app, integrations/deploy/app.py, and tests/integration/test_deploy.py; rebuilt only when a requirements file changes.
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.requirements-installed
.PHONY: deploy-env
deploy-env: $(DEPLOY_STAMP)
test-integration: deploy-env

$(DEPLOY_STAMP): requirements.txt requirements-deploy.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r requirements-deploy.txt
	touch $@

# MONAI Label in an environment of its own (requirements-monailabel.txt says why: a complete lock installed with
# --no-deps) for the zoo's app, integrations/monailabel, and tests/integration/test_monailabel.py; plus the
# repository's stand-in for torchvision, whose 0.28 release is a CUDA build only (its pyproject.toml says more).
# Rebuilt only when those files change.
MONAILABEL_VENV := .venv-monailabel
MONAILABEL_STAMP := $(MONAILABEL_VENV)/.requirements-installed
TORCHVISION_STANDIN := integrations/monailabel/torchvision-standin
.PHONY: setup-monailabel
setup-monailabel: $(MONAILABEL_STAMP)
test-integration: setup-monailabel

$(MONAILABEL_STAMP): requirements-monailabel.txt $(wildcard $(TORCHVISION_STANDIN)/pyproject.toml $(TORCHVISION_STANDIN)/torchvision/*.py)
	test -x $(MONAILABEL_VENV)/bin/python || $(PYTHON) -m venv $(MONAILABEL_VENV)
	$(MONAILABEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MONAILABEL_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-monailabel.txt
	$(MONAILABEL_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall ./$(TORCHVISION_STANDIN)
	rm -rf $(TORCHVISION_STANDIN)/build $(TORCHVISION_STANDIN)/*.egg-info
	touch $@

# The official BraTS evaluation package (brats-evaluation, on panoptica) in an environment of its own
# (requirements-brats-eval.txt says why), for tests/unit/metrics/test_brats.py; rebuilt only when that file changes.
BRATS_EVAL_VENV := .venv-brats-eval
BRATS_EVAL_STAMP := $(BRATS_EVAL_VENV)/.requirements-installed
.PHONY: brats-eval-env
brats-eval-env: $(BRATS_EVAL_STAMP)
test-integration: brats-eval-env

$(BRATS_EVAL_STAMP): requirements-brats-eval.txt
	test -x $(BRATS_EVAL_VENV)/bin/python || $(PYTHON) -m venv $(BRATS_EVAL_VENV)
	$(BRATS_EVAL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BRATS_EVAL_VENV)/bin/python -m pip install --quiet -r requirements-brats-eval.txt
	touch $@

# Longer runs that train to a quality bar on phantoms.
test-slow: setup
	$(PY) -m pytest -m slow

# Speed and memory of every bundle next to its reference, in one run of under 20 minutes on 2 cores:
# bench/results/<timestamp>.{json,md} and bench/results/latest.{json,md}.
bench: setup
	$(PY) -m bench.run --out bench/results

# bench plus what its budget leaves out (the whole-case fp32 passes of the three slowest networks, the allocator
# ablations, the FCT-vs-BasicUNet Dice comparison, the RefNet cascade's time and peak memory on a 512x512x400 CT):
# about an hour on 2 cores, of which the 512x512x400 CT takes about 20 minutes; plus one RefNet request through the
# zoo's MONAI Label server on a 512x512x100 CT, with /info/ answer times meanwhile (bench/monailabel.py).
bench-full: setup
	$(PY) -m bench.run --out bench/results --full

# The phantom cross-validation study of cohra_unet_brats (its README: design and results): 3 folds x 3 seeds scored
# on held-out test phantoms, then mirroring TTA, ET postprocessing and each seed's fold ensemble on the same models.
# About 40 minutes on 2 cores; data/study_crossval/cv/{crossval,variants}.md. Reruns reuse finished runs.
STUDY := data/study_crossval
study-crossval: setup
	test -d $(STUDY)/brats || $(PY) -m common.synthetic brats --out $(STUDY)/brats --cases 20 --size 64 64 48 --seed 0
	$(PY) -m common.data.brats make-split --dataset-dir $(STUDY)/brats --out $(STUDY)/split.json --folds 3 --seed 0
	echo '{"dataset_dir": "$(CURDIR)/$(STUDY)/brats", "split_file": "$(CURDIR)/$(STUDY)/split.json"}' > $(STUDY)/data.json
	$(PY) -m common.crossval --bundle-root bundles/cohra_unet_brats --folds 3 --seeds 3 --out $(STUDY)/cv \
		--base bundles/cohra_unet_brats/configs/crossval_phantom.json --base $(STUDY)/data.json \
		--variants bundles/cohra_unet_brats/configs/crossval_variants.json --ensemble

# The phantom KD study of bundles/mtcm_kd_t1ce_student (its README states the design): five arms on the same T1ce
# student, 3 seeds, held-out test phantoms; tables and curves in data/study_kd/runs. About an hour on 2 CPU cores.
# KD_STUDY_SEEDS and KD_STUDY_BASE (extra --base overlays) exist for the slow-tier test that runs it on a tiny budget.
KD_STUDY ?= $(CURDIR)/data/study_kd
KD_STUDY_SEEDS ?= 3
KD_STUDY_BASE ?=
study-kd: setup
	test -d $(KD_STUDY)/brats || $(PY) -m common.synthetic brats --out $(KD_STUDY)/brats --cases 24 --size 64 64 48 --seed 0
	$(PY) -m common.data.brats make-split --dataset-dir $(KD_STUDY)/brats --out $(KD_STUDY)/split.json --folds 3 --seed 0
	echo '{"dataset_dir": "$(KD_STUDY)/brats", "split_file": "$(KD_STUDY)/split.json"}' > $(KD_STUDY)/data.json
	$(PY) -m common.ablation --bundle-root bundles/mtcm_kd_t1ce_student --out $(KD_STUDY)/runs --seeds $(KD_STUDY_SEEDS) \
		--grid bundles/mtcm_kd_t1ce_student/configs/study_kd.json --base $(KD_STUDY)/data.json $(KD_STUDY_BASE) \
		--curves val_dice_wt loss kd_loss student_seg_loss teacher_wt_dice_0 teacher_weight_0 \
		--figure-note "T1ce student, teachers FLAIR/T2/T1; MONAI Dice per region; 24 phantoms, 20 epochs"

demo: setup
	$(PY) -m ci.demo

verify: setup
	@set -e; for bundle in bundles/*/; do $(PY) -m ci.verify_bundle $$bundle; done

# Release zips dist/<name>_v<version>.zip and the catalogue dist/model_info.json (BASE_URL=https://host/path
# fills each entry's download address).
package: setup
	$(PY) -m ci.package_bundle bundles/*/ --out dist $(if $(BASE_URL),--base-url $(BASE_URL))

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf demo_output dist data/synthetic .pytest_cache .ruff_cache
