# One command each on a fresh machine: the venv is created and the project installed on first use.
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# Extras to install: dev (tests), spark (catalogue scoring on Spark; needs Java), lite, cluster.
EXTRAS     ?= dev
comma      := ,
STAMP      := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# Override for another platform/CUDA build, e.g. TORCH_SPEC="torch torchvision --index-url ...".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install train test ui smoke sweep benchmark benchmark-cache data-report reproduce clean clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $(STAMP)

## Train the default config on the bundled sample (offline, CPU). Extra Hydra overrides: make train ARGS="head=linear"
train: $(STAMP)
	$(PY) -m fashion.train $(ARGS)

## The test suite, on 2 CPU cores in 6-12 min (by the processor): two pytest-xdist workers, each test file kept on one worker
## (its fixtures, servers and databases stay together). PYTEST_ARGS= runs it serially.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## A seconds-long end-to-end run on a tiny random model.
smoke: $(STAMP)
	$(PY) -m fashion.train experiment=smoke

## A small Optuna study on the sample (4 short trials); the best lands in conf/experiment/tuned_fashion.yaml
sweep: $(STAMP)
	$(PY) -m fashion.train hparams_search=optuna hparams_search.n_trials=4 trainer.max_epochs=2 $(ARGS)

## Speed and memory of the training loop vs the bare model, written to docs/performance.md
benchmark: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

## The dataset report (plots + README.md, logged to MLflow): make data-report ARGS="data=subset"
data-report: $(STAMP)
	$(PY) -m fashion.data_report report $(ARGS)

## The published recipes, our best recipe, the loss-weighting ablation and docs/results.md (subset, CPU: ~1.5 h)
reproduce: $(STAMP)
	PY=$(PY) scripts/reproduce.sh $(ARGS)

## Per-epoch time with vs without the frozen-feature cache, written to docs/feature_cache.md
benchmark-cache: $(STAMP)
	$(PY) scripts/benchmark_feature_cache.py $(ARGS)

## The MLflow UI on the local store; prints the link to the training runs
ui: $(STAMP)
	@$(PY) -c 'from fashion.tracking.run import ui_url; print("training runs:", ui_url())'
	$(VENV)/bin/mlflow ui --backend-store-uri "$$($(PY) -c 'from fashion.config import tracking_uri; print(tracking_uri())')" --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs multirun .pytest_cache

## Delete the feature cache: an entry per backbone, weights, settings and image set piles up there; the next run refills what it needs
clean-cache:
	rm -rf .cache/features
