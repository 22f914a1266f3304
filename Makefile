# Two commands on a fresh clone: `make run` (the whole pipeline on CPU) and `make test`.
# Everything bootstraps itself: .venv is created and filled on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines: torch is pinned in the same pip command as the rest, so pip takes the CPU wheel
# and never resolves a multi-GB CUDA build. GPU machines: see README "Installing on a GPU machine".
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
IMAGE  ?= ghcr.io/lmforge/lmforge:0.1.0
PYTEST_ARGS ?=

.PHONY: install run multimodal data browser postgres test lint image k8s-jobs compile ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH) -e '.[dev]'
	$(BIN)/pip install --no-deps 'kubeflow-katib==0.19.0'  # see pyproject.toml's dev extra
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/dvc pull --quiet --allow-missing  # pipeline outputs are rebuilt by dvc repro, not pulled

run: data
	LMFORGE_PIPELINE_RUN_ID=$${LMFORGE_PIPELINE_RUN_ID:-local-$$(date -u +%Y%m%dT%H%M%S)} \
	  PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	@echo
	@echo "Pretrained model:  outputs/pretrain/model"
	@echo "Classifier:        outputs/finetune/model"
	@echo "Evaluation report: outputs/evaluate/report.md"
	@echo "MLflow runs:       sqlite:///$(CURDIR)/mlflow.db (artifacts in mlartifacts/)"
	@echo "Open the UI:       $(BIN)/lmforge ui   # then http://127.0.0.1:5000"

# The image chain (multimodal/dvc.yaml: image-validate, image-augment, then the model stages);
# not part of `make run`.
multimodal: data
	LMFORGE_PIPELINE_RUN_ID=$${LMFORGE_PIPELINE_RUN_ID:-local-$$(date -u +%Y%m%dT%H%M%S)} \
	  PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro multimodal/dvc.yaml

# Headless Chromium for the browser test of the MLflow UI (Debian package; needs root for apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: sudo apt-get install chromium (the browser test is skipped)"; fi; }

# PostgreSQL (Debian package; needs root for apt) for the tests of MLflow on PostgreSQL; the suite
# starts a private server itself (scripts/postgres.sh). Not root and not installed: those skip.
postgres:
	@scripts/postgres.sh install || test $$? -eq 3

test: data browser postgres
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

compile: install
	$(BIN)/lmforge pipeline compile

# The lmforge image (CUDA torch, non-root); push it where the cluster pulls from.
image:
	docker build -f docker/Dockerfile --build-arg GIT_COMMIT=$$(git rev-parse HEAD) -t $(IMAGE) .

# The PyTorchJobs, TrainingRuntimes and the TrainJob in k8s/ rendered from their params.yaml
# (tests check they are current).
k8s-jobs: install
	for env in cpu gpu; do \
	  $(BIN)/python -m lmforge.launch.pytorchjob k8s/params/$$env/params.yaml \
	    > k8s/templates/$$env-pytorchjob/pytorchjob.yaml; \
	  $(BIN)/python -m lmforge.launch.trainjob job k8s/params/$$env/params.yaml \
	    > k8s/templates/$$env-trainjob/trainjob.yaml; \
	done
	$(BIN)/python -m lmforge.launch.trainjob runtime k8s/params/cpu/params.yaml \
	  > k8s/components/trainer/trainingruntime.yaml
	$(BIN)/python -m lmforge.launch.trainjob runtime k8s/params/gpu/params.yaml \
	  > k8s/overlays/gpu/trainingruntime.yaml

ui: install
	$(BIN)/lmforge ui

clean:
	rm -rf outputs .pytest_cache
