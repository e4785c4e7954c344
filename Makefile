# The README's two commands: `make demo` (run) and `make test` (the whole suite).
# Both do their own set-up on a fresh machine: Debian packages, then .venv.

PY := .venv/bin/python
# gcc: builds the optional native LZW accelerator (gossip/wire/_lzw.c) during the venv install.
# systemd-container, nftables, python3: tests/systemd boots the unit with systemd-nspawn (Debian's
# python3 runs the machine's venv; nft is what the sandbox must allow).
DEBS := serf iproute2 iputils-ping tcpdump qemu-system-x86 busybox-static systemd gcc docker.io podman containernetworking-plugins systemd-container nftables python3 golang-go golang-github-hashicorp-memberlist-dev
PYTEST_ARGS ?=

.PHONY: setup debs venv vm-image test test-fast explore lint demo demo-docker clean-lab

setup: debs venv vm-image

# Debian's stock kernel, unpacked for the QEMU IPsec tests (cached; ~15 s the first time).
vm-image: debs venv
	$(PY) -m tests.vm.image prepare

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: .venv/.installed

# setup.py and gossip/wire/_lzw.c: the editable install builds the native LZW accelerator
# in place (gossip/wire/_lzw.*.so); a changed C file must rebuild it.
.venv/.installed: pyproject.toml setup.py gossip/wire/_lzw.c
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,sim]'
	@touch $@

lint: venv
	.venv/bin/ruff check .
	.venv/bin/mypy

# OVERLAY_REQUIRE_NATIVE=1: a test fails if the LZW accelerator was not built.
# HYPOTHESIS_PROFILE=ci: the same examples every run (tests/conftest.py); new ones
# are searched by `make explore`.
test: setup lint
	OVERLAY_REQUIRE_NATIVE=1 HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: venv
	OVERLAY_REQUIRE_NATIVE=1 $(PY) -m pytest -q -m "not slow and not netns and not interop and not vm" $(PYTEST_ARGS)

# Hunt for new counterexamples: the pure tiers (the long stateful machine included)
# with fresh random examples, EXPLORE_ROUNDS times; stops at the first failure.
EXPLORE_ROUNDS ?= 3
explore: venv
	@for i in $$(seq $(EXPLORE_ROUNDS)); do \
	  echo "explore round $$i/$(EXPLORE_ROUNDS)"; \
	  HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -p no:cacheprovider -x \
	    -m "not netns and not interop and not vm" tests/unit tests/property tests/stateful tests/sim \
	    $(PYTEST_ARGS) || exit 1; \
	done

demo: debs venv
	$(PY) -m agent.lab demo

demo-docker: debs venv
	$(PY) -m agent.lab.dockerdemo

clean-lab: venv
	$(PY) -m agent.lab cleanup
