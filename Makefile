# Two commands do all the set-up (see README):
#   make serve   create .venv if needed, then run the Label Studio ML backend on the embedded model
#   make test    create .venv if needed, then run the whole test suite (unit tests, then the
#                end-to-end suite against a real Label Studio: see docs/e2e.md; SAFIRE_E2E=0 skips it)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-test.txt pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: env serve test test-fast e2e ls-env screenshots bench clean-env photos docker-smoke

# requirements.txt is the runtime (what the Docker image holds); requirements-test.txt adds the
# test tools on top of it (it includes requirements.txt), resolved together in one pip run.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=23"
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

env: $(STAMP)

serve: env
	$(VENV)/bin/safire serve

test: env
	$(PY) -m pytest -q tests

test-fast: env
	$(PY) -m pytest -q tests -m "not slow and not e2e"

# Label Studio 1.23.2 in its own venv outside the repo (${SAFIRE_LS_VENV:-~/.cache/safire-studio/ls-venv})
ls-env:
	bash scripts/labelstudio.sh install

e2e: env
	$(PY) -m pytest -q tests/e2e

# docs/screenshots/*.png from a real Label Studio in headless Chromium (apt-get install -y chromium)
screenshots: env
	$(PY) scripts/screenshots.py

# Measured tables for the README (run on a quiet machine; each prints a markdown table)
bench: env
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_backend.py
	$(PY) benchmarks/bench_rle.py
	$(PY) benchmarks/bench_train.py

clean-env:
	rm -rf $(VENV)

# The offline photo pool of `safire synth` (several hundred real photos from Debian packages, see
# docs/photos.md) into ${SAFIRE_PHOTO_DIR:-~/.cache/safire-studio/photos}; needs apt-get (run
# `apt-get update` once). Re-running is fast: packages already installed are skipped.
photos: env
	$(PY) scripts/install_photos.py

# Build the Docker image, run it and query it (scripts/docker_smoke.sh; needs a Docker engine, so it
# is not part of `make test`). Arguments go through SMOKE_ARGS, e.g.
#   make docker-smoke SMOKE_ARGS="--base-image safire-base:bookworm --torch-index-url https://pypi.org/simple"
docker-smoke:
	bash scripts/docker_smoke.sh $(SMOKE_ARGS)

# The README's robustness table and plot, and its evaluation-report screenshot, on the held-out
# synthetic test sets (test photos only, never seen in training; generated on first use into
# $(TEST_DATA), e.g. `make robustness TEST_DATA=data` to reuse sets that exist). CHECKPOINT
# (default: the embedded model) selects the weights; ROBUSTNESS_LIMIT / REPORT_LIMIT are images
# per set.
.PHONY: robustness report
TEST_DATA ?= data
CHECKPOINT ?=
ROBUSTNESS_LIMIT ?= 10
REPORT_LIMIT ?= 8
TEST_SETS := $(TEST_DATA)/test-k1 $(TEST_DATA)/test-k2 $(TEST_DATA)/test-k3
CKPT_ARG := $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),)

$(TEST_DATA)/test-k%/manifest.json: | env
	$(VENV)/bin/safire synth --out $(TEST_DATA)/test-k$* --n 100 --sources $* --split test --seed 50$* --size-min 384 --size-max 896 --quiet

robustness: env $(addsuffix /manifest.json,$(TEST_SETS))
	$(VENV)/bin/safire robustness --data $(TEST_SETS) --limit $(ROBUSTNESS_LIMIT) --out docs/robustness --no-examples $(CKPT_ARG)

report: env $(addsuffix /manifest.json,$(TEST_SETS))
	$(VENV)/bin/safire evaluate --data $(TEST_SETS) --limit-each $(REPORT_LIMIT) --report out/report $(CKPT_ARG)
	$(PY) scripts/report_screenshot.py out/report/index.html docs/screenshots/report.png

# Calibrate a checkpoint's image score and automatic mode on held-out validation composites (val
# photos only; generated on first use into $(TEST_DATA)), as the embedded default was:
#   make calibrate CHECKPOINT=runs/x/model.pt OUT=x-calibrated.pt
.PHONY: calibrate
CAL_SETS := $(TEST_DATA)/val-mix $(TEST_DATA)/val-score
OUT ?= out/calibrated.pt

$(TEST_DATA)/val-mix/manifest.json: | env
	$(VENV)/bin/safire synth --out $(TEST_DATA)/val-mix --n 64 --sources 1-4 --authentic-fraction 0.25 --split val --seed 201 --size-min 320 --size-max 768 --quiet

$(TEST_DATA)/val-score/manifest.json: | env
	$(VENV)/bin/safire synth --out $(TEST_DATA)/val-score --n 160 --sources 1-4 --authentic-fraction 0.4 --split val --seed 301 --size-min 384 --size-max 896 --quiet

calibrate: env $(addsuffix /manifest.json,$(CAL_SETS))
	mkdir -p $(dir $(OUT))
	$(VENV)/bin/safire calibrate --checkpoint $(or $(CHECKPOINT),safire/weights/safire-native-default.pt) --data $(CAL_SETS) --out $(OUT) --half --max-auth-split 0.1 --curve $(basename $(OUT))_curve.png --json $(basename $(OUT)).json

# The model card's figure (held-out examples: image, truth, predicted sources, heat map) with the
# embedded default model; examples are generated from held-out photos (`make photos` first).
.PHONY: figure
figure: env
	$(PY) scripts/model_card_figure.py --out docs/figures/heldout.png
