# `make demo` and `make test` are the two commands a person needs. Both set up .venv first and are idempotent:
# the venv is rebuilt only when a requirements file changes, and synthetic data are reused when already there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup test test-integration test-slow bench bench-avx2 bench-weights bench-full study-crossval study-kd study-fct study-refnet study-cohra demo verify package lint clean

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

# The same measurements on the path of an AVX2-only CPU (no AVX-512, no bf16), emulated on this one: oneDNN and
# PyTorch's kernels restricted to AVX2 (common/cpu.py). The clock, caches and memory stay this machine's; the report
# names both kinds. Results in bench/results/avx2_emulated.
bench-avx2: setup
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m bench.run --out bench/results/avx2_emulated

# Weights that segment the bench's BraTS phantom, for the agreement checks of make bench and bench.foreground_crop
# (bench/weights.py states the recipe): COHRA-UNet, the student and SegResNet, 300 steps of 64^3 patches each. Once
# per work directory (bench/results/work/weights); about an hour on 2 cores, most of it COHRA-UNet and the student.
bench-weights: setup
	$(PY) -m bench.weights

# bench plus what its budget leaves out (the whole-case fp32 passes of the three slowest networks, the allocator
# ablations, the foreground crop of every 3D network as a lever row (time, windows, agreement), the FCT-vs-BasicUNet
# Dice comparison, the RefNet cascade's time and peak memory on a 512x512x400 CT):
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

# The phantom FCT study of bundles/fct_visible_korean (its README states the design): FCT (paper and tf_main presets)
# next to BasicUNet 2D at the real 256x256 input, the same 50 phantom slices (32 training / 8 validation / 10 held-out
# test), 57 epochs of 16 steps and the same schedule for every arm, 3 seeds; tables and curves in data/study_fct/runs.
# About 3 hours on 2 quiet CPU cores: 912 steps per run at the measured 1.83 s (FCT paper) and 0.32 s (BasicUNet) per
# training step (`make bench`), about 1.6 s for tf_main (scaled by its FLOPs); much longer on shared cores.
# Finished runs are recorded in FCT_STUDY_RECORD (studies/fct, committed; common.records), so that a fresh clone goes
# on where the last machine stopped. FCT_STUDY_SEEDS, FCT_STUDY_BASE (extra --base overlays) and FCT_STUDY_RECORD
# exist for the slow-tier test that runs it on a tiny budget.
FCT_STUDY ?= $(CURDIR)/data/study_fct
FCT_STUDY_SEEDS ?= 3
FCT_STUDY_RECORD ?= $(CURDIR)/studies/fct
FCT_STUDY_BASE ?=
study-fct: setup
	test -d $(FCT_STUDY)/vk || $(PY) -m common.synthetic visible_korean --out $(FCT_STUDY)/vk --cases 50 --size 304 512 --seed 0
	$(PY) -m common.data.visible_korean prepare --dataset-dir $(FCT_STUDY)/vk --out $(FCT_STUDY)/prepared \
		--test-fraction 0.2 --val-fraction 0.2 --quality-check 0 --block-size 1 --seed 0
	echo '{"datalist_file": "$(FCT_STUDY)/prepared/datalist.json"}' > $(FCT_STUDY)/data.json
	$(PY) -m common.ablation --bundle-root bundles/fct_visible_korean --out $(FCT_STUDY)/runs --seeds $(FCT_STUDY_SEEDS) \
		$(if $(FCT_STUDY_RECORD),--record $(FCT_STUDY_RECORD)) \
		--grid bundles/fct_visible_korean/configs/study_fct.json --base $(FCT_STUDY)/data.json $(FCT_STUDY_BASE) \
		--curves val_dice_bone val_dice_muscle val_mean_dice train_loss \
		--figure-note "RGB input 256x256; MONAI Dice per class, mean over 8 validation slices; 16 steps/epoch" \
		--footnote "synthetic Visible Korean phantoms: 50 slices 304x512 (32 train / 8 validation / 10 test), not real data"

# The phantom COHRA study of bundles/cohra_unet_brats (its README states the design): COHRA-UNet next to MONAI
# SegResNet and the MTCM-KD backbone, the same 24 phantoms of 64x64x48 (12 training / 7 validation / 5 held-out
# test), 32^3 patches, 200 epochs of 6 steps and the same schedule for every arm, 3 seeds; tables and curves in
# data/study_cohra/runs. About 2.5 hours on 2 quiet CPU cores: 1200 steps per run at an estimated 0.62-0.80 s
# (COHRA-UNet), 0.52-0.62 s (MTCM-KD backbone) and 0.16-0.20 s (SegResNet) per training step, plus 20 validations
# of 7 phantoms. On cores shared with other jobs run `OMP_NUM_THREADS=1 make study-cohra`: 2 threads per process
# oversubscribe them (the SegResNet pilot's steps took 7 s instead of 0.4 s). Reruns reuse finished runs and resume
# an interrupted one.
# Finished runs are recorded in COHRA_STUDY_RECORD (studies/cohra, committed; common.records), so that a fresh clone
# goes on where the last machine stopped. COHRA_STUDY_SEEDS, COHRA_STUDY_BASE (extra --base overlays) and
# COHRA_STUDY_RECORD exist for the slow-tier test that runs it on a tiny budget.
COHRA_STUDY ?= $(CURDIR)/data/study_cohra
COHRA_STUDY_SEEDS ?= 3
COHRA_STUDY_RECORD ?= $(CURDIR)/studies/cohra
COHRA_STUDY_BASE ?=
study-cohra: setup
	test -d $(COHRA_STUDY)/brats || $(PY) -m common.synthetic brats --out $(COHRA_STUDY)/brats --cases 24 --size 64 64 48 --seed 0
	$(PY) -m common.data.brats make-split --dataset-dir $(COHRA_STUDY)/brats --out $(COHRA_STUDY)/split.json --folds 3 --seed 0
	echo '{"dataset_dir": "$(COHRA_STUDY)/brats", "split_file": "$(COHRA_STUDY)/split.json"}' > $(COHRA_STUDY)/data.json
	$(PY) -m common.ablation --bundle-root bundles/cohra_unet_brats --out $(COHRA_STUDY)/runs --seeds $(COHRA_STUDY_SEEDS) \
		$(if $(COHRA_STUDY_RECORD),--record $(COHRA_STUDY_RECORD)) \
		--grid bundles/cohra_unet_brats/configs/study_cohra.json --base $(COHRA_STUDY)/data.json $(COHRA_STUDY_BASE) \
		--curves val_dice_tc val_dice_wt val_dice_et val_mean_dice train_loss \
		--figure-note "T1, T1ce, T2, FLAIR; MONAI region Dice, mean of 7 validation phantoms; 6 steps/epoch" \
		--footnote "synthetic BraTS phantoms: 24 cases 64x64x48 (12 train / 7 validation / 5 test), not real data"

# The phantom RefNet study of bundles/refnet_synapse (its README states the design): 30 phantom CTs of 96x96x64 in the
# Synapse split (18 training, 12 held-out test); Swin UNETR base models (configs/study_refnet_base.json), 3 for the
# paper's Algorithm 1 (all training cases, predicting them; the first also predicts the test cases) and 3 out of fold
# (3 folds), and how good each group of their predictions is (base/base_quality.md); then RefNet arms changed one at a
# time from the paper's recipe (configs/study_refnet.json), 900 steps each, 3 seeds; tables (refinement_seeds.md: per
# organ, raw / refined / change, mean ± SD) and curves in data/study_refnet/runs. Reruns reuse finished base models
# and runs and resume an interrupted run. Several hours on 2 CPU cores. The base models' predictions and every
# finished run are recorded in studies/refnet (common.records), so that a fresh clone continues the study instead of
# starting it again.
# REFNET_STUDY_SIZE, REFNET_STUDY_SEEDS, REFNET_STUDY_BASE_MODEL, REFNET_STUDY_RECORD and REFNET_STUDY_BASE (extra
# --base overlays of the RefNet runs) exist for the slow-tier test that runs it on a tiny budget.
REFNET_STUDY ?= $(CURDIR)/data/study_refnet
REFNET_STUDY_SIZE ?= 96 96 64
REFNET_STUDY_SEEDS ?= 3
REFNET_STUDY_RECORD ?= $(CURDIR)/studies/refnet
REFNET_STUDY_BASE_MODEL ?= $(CURDIR)/bundles/refnet_synapse/configs/study_refnet_base.json
REFNET_STUDY_BASE ?=
REFNET_BASE_ARGS = --bundle-root bundles/refnet_synapse --dataset-dir $(REFNET_STUDY)/btcv --out $(REFNET_STUDY)/base \
	--overlay $(REFNET_STUDY_BASE_MODEL) $(if $(REFNET_STUDY_RECORD),--record $(REFNET_STUDY_RECORD)/base)
study-refnet: setup
	test -d $(REFNET_STUDY)/btcv || $(PY) -m common.synthetic btcv --out $(REFNET_STUDY)/btcv --cases 30 \
		--size $(REFNET_STUDY_SIZE) --seed 0
	$(PY) -m common.base_predictions base-in-sample $(REFNET_BASE_ARGS) --seeds 0 1 2
	$(PY) -m common.base_predictions base-oof $(REFNET_BASE_ARGS) --folds 3 --seeds 0
	$(PY) -m common.metrics.refinement base $(REFNET_STUDY)/base/datalist.json --dataset-dir $(REFNET_STUDY)/btcv
	echo '{"dataset_dir": "$(REFNET_STUDY)/btcv", "datalist_file": "$(REFNET_STUDY)/base/datalist.json"}' \
		> $(REFNET_STUDY)/data.json
	$(PY) -m common.ablation --bundle-root bundles/refnet_synapse --out $(REFNET_STUDY)/runs --seeds $(REFNET_STUDY_SEEDS) \
		$(if $(REFNET_STUDY_RECORD),--record $(REFNET_STUDY_RECORD)/runs) \
		--grid bundles/refnet_synapse/configs/study_refnet.json --base $(REFNET_STUDY)/data.json $(REFNET_STUDY_BASE) \
		--curves val_mean_dice val_raw_mean_dice train_loss \
		--figure-note "input: base label map (+ CT for image_aware); MONAI Dice, mean of 12 organs, 3 validation cases" \
		--footnote "synthetic BTCV phantoms: 30 CTs (18 train incl. 3 validation / 12 test), not real data"
	$(PY) -m common.metrics.refinement seeds $(REFNET_STUDY)/runs \
		--note "Split: the 12 held-out test phantoms (synthetic CT, not real data); input: the base label map."

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
