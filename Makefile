# The two commands of the README: `make demo` and `make test`. Each installs what it
# needs into .venv (pinned by constraints.txt) and, on Debian as root, the
# Fashion-MNIST package.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install -q -c constraints.txt
WORKDIR ?= workdirs/fmnist_demo
FMNIST_DIR := /usr/share/datasets/fashion-mnist
export JAX_PLATFORMS ?= cpu

.PHONY: demo test test-fast install dataset clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(VENV)/.base: $(VENV)/bin/python setup.py constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) -e '.[test,torch,fast]'
	touch $@

install: $(VENV)/.base

# Debian's dataset-fashion-mnist package; elsewhere the data layer falls back to
# TFDS (internet) or says what is missing.
dataset:
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || \
	   (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	fi
	@[ -d $(FMNIST_DIR) ] || echo "note: $(FMNIST_DIR) missing; Fashion-MNIST will come from TFDS (needs internet)"

demo: $(VENV)/.base dataset
	$(VENV)/bin/mae-jax pretrain --config=configs/pretrain_fmnist.py --workdir=$(WORKDIR)
	$(VENV)/bin/mae-jax visualize --workdir=$(WORKDIR) --out=$(WORKDIR)/reconstructions.png
	@$(VENV)/bin/python -c "import json; e = json.load(open('$(WORKDIR)/eval.json')); \
	  print('linear-probe top-1 on %d test images: MAE encoder %.4f, random encoder %.4f, raw pixels %.4f' \
	        % (e['probe_test_images'], e['linear_probe_top1'], e['random_init_probe_top1'], e['raw_pixels_probe_top1']))"

# Every test. Test files run on TEST_WORKERS processes (pytest-xdist; one file stays
# on one worker, so its module fixtures are built once; the files with the most slow
# tests go first); the 30 slowest tests are listed. docs/testing.md says more.
TEST_WORKERS ?= 2
test: $(VENV)/.test dataset
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 tests

# The inner loop (about a minute): the model, masking, losses and targets, schedules, data order,
# configs and the command line, without the slow tests and those that start processes.
FAST_TESTS := masking model attention pos_resize optim data finetune_augment uint8_input \
  video_data loop structure cli multispectral targets
test-fast: $(VENV)/.test dataset
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	  -m "not slow and not multiprocess" $(FAST_TESTS:%=tests/test_%.py)

clean:
	rm -rf $(VENV) workdirs
