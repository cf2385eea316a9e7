# husk: build, guest image, tests. All paths are absolute so that commands keep working when
# tests/vm-run.sh runs them inside the KVM test host (same paths, read-only root there).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CARGO        ?= cargo
AGENT_TARGET := x86_64-unknown-linux-gnu
TARGET_DIR   := $(CURDIR)/target
RELEASE      := $(TARGET_DIR)/release
AGENT        := $(TARGET_DIR)/$(AGENT_TARGET)/release/husk-agent
GUEST        := $(CURDIR)/build/guest
VM_RUN       := $(CURDIR)/tests/vm-run.sh

# What VM tests, demo and bench use (tests/vm-run.sh passes HUSK_* into the test host).
export HUSK_VMM     := $(RELEASE)/husk-vmm
export HUSK_BIN_DIR := $(RELEASE)
export HUSK_KERNEL  := $(GUEST)/vmlinux
export HUSK_INITRD  := $(GUEST)/initrd.img

.PHONY: build host-bins agent guest-image kernel initrd unit-test vm-test-build vm-test test \
        demo bench lint clean help install test-rootfs fuzz-build fuzz fuzz-smoke

help:
	@echo "targets: build guest-image unit-test fuzz-smoke fuzz vm-test test demo bench lint clean"

build: host-bins agent

host-bins:
	$(CARGO) build --release -p husk-vmm -p husk -p containerd-shim-husk-v2

# The agent is PID 1 of a guest with no libc: link it statically. --target gives it its own
# target dir (target/$(AGENT_TARGET)), so the RUSTFLAGS change does not rebuild the host bins.
agent:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release -p husk-agent --target $(AGENT_TARGET)

kernel:
	$(CURDIR)/guest-image/build-kernel.sh

initrd: agent kernel
	$(CURDIR)/guest-image/build-initrd.sh $(AGENT) $(HUSK_INITRD)

guest-image: kernel initrd

unit-test:
	$(CARGO) test --workspace --exclude husk-tests

# VM tests are compiled here, on the host: inside the KVM test host the filesystem is
# read-only and cargo cannot run. The executables' paths go to build/vm-tests.list.
vm-test-build:
	mkdir -p $(CURDIR)/build
	$(CARGO) test -p husk-tests -p husk-agent --release --no-run --message-format=json > $(CURDIR)/build/vm-tests.json
	python3 -c 'import json,sys; \
	  [print(m["executable"]) for m in map(json.loads, filter(str.strip, open(sys.argv[1]))) \
	   if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
	   and m["target"]["kind"] == ["test"]]' \
	  $(CURDIR)/build/vm-tests.json > $(CURDIR)/build/vm-tests.list
	@echo "vm-test-build: $$(wc -l < $(CURDIR)/build/vm-tests.list) test executable(s) in build/vm-tests.list"

# A debootstrapped Debian rootfs for the container tests (cached in /var/cache/husk).
test-rootfs:
	$(CURDIR)/tests/debian-rootfs.sh > /dev/null

vm-test: build guest-image vm-test-build test-rootfs
	HUSK_DEBIAN_ROOTFS=$$($(CURDIR)/tests/debian-rootfs.sh) $(CURDIR)/tests/run-vm-tests.sh

test: unit-test fuzz-smoke vm-test

# Fuzzing (fuzz/README.md): cargo-fuzz + libFuzzer on the stable toolchain; RUSTC_BOOTSTRAP=1
# lets it pass -Zsanitizer=address. New corpus entries go to fuzz/corpus-new/<target> (not
# committed), crashes to fuzz/artifacts/<target>/. `make fuzz FUZZ_SECONDS=3600 FUZZ_TARGETS=vsock`.
FUZZ_TARGETS       ?= agent_frame mmio vsock fs_request net_header
FUZZ_SECONDS       ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_DIR           := $(CURDIR)/fuzz
FUZZ_RUN = RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir $(FUZZ_DIR)
FUZZ_OPTS = -timeout=10 -rss_limit_mb=2048 -print_final_stats=1

fuzz-build:
	@command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo install --locked cargo-fuzz" >&2; exit 1; }
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build --fuzz-dir $(FUZZ_DIR)

fuzz: fuzz-build
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus-new/$$t; \
	  $(FUZZ_RUN) $$t $(FUZZ_DIR)/corpus-new/$$t $(FUZZ_DIR)/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) $(FUZZ_OPTS) || exit 1; \
	done

# Every seed, then FUZZ_SMOKE_SECONDS of fuzzing per target; what it finds is thrown away
# unless it crashes (the reproducer is then in fuzz/artifacts/<target>/).
fuzz-smoke: fuzz-build
	for t in $(FUZZ_TARGETS); do \
	  new=$$(mktemp -d); log=$$new.log; \
	  if $(FUZZ_RUN) $$t $$new $(FUZZ_DIR)/corpus/$$t -- \
	       -max_total_time=$(FUZZ_SMOKE_SECONDS) $(FUZZ_OPTS) > $$log 2>&1; then \
	    echo "fuzz-smoke: $$t: $$(grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' $$log | tr -s ' \t' ' ' | tr '\n' ';')"; \
	    rm -rf $$new $$log; \
	  else \
	    tail -n 60 $$log; rm -rf $$new $$log; \
	    echo "fuzz-smoke: $$t FAILED (reproducer in $(FUZZ_DIR)/artifacts/$$t/)" >&2; exit 1; \
	  fi; \
	done

# The main job in one screen (tests/src/bin/husk-demo.rs): `husk check`, a microVM's boot figures,
# a busybox container through `husk run` next to `crun run` of the same bundle, and the
# debootstrapped Debian image when it is cached (`make test-rootfs`; the demo does not build it).
DEBIAN_ROOTFS_CACHE := $${HUSK_CACHE_DIR:-/var/cache/husk}/debian-rootfs-bookworm-build
demo:
	@echo "demo: [1/4] building husk, husk-vmm, the shim and the static agent" >&2
	$(MAKE) --no-print-directory build
	@echo "demo: [2/4] guest kernel and initrd (the first kernel build takes ~10 min, cached after)" >&2
	$(MAKE) --no-print-directory guest-image
	@echo "demo: [3/4] building the demo; busybox for its bundle, crun to compare with" >&2
	$(CARGO) build --release -p husk-tests --bin husk-demo
	[ -x /bin/busybox ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
	command -v crun >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq crun >/dev/null \
	  || echo "demo: crun could not be installed; husk runs alone" >&2
	@echo "demo: [4/4] running it where KVM guests can run (tests/vm-run.sh)" >&2
	d=$(DEBIAN_ROOTFS_CACHE); if [ -x "$$d/bin/bash" ]; then export HUSK_DEBIAN_ROOTFS=$$d; fi; \
	  $(VM_RUN) $(RELEASE)/husk-demo

bench: build guest-image
	command -v crun >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq crun >/dev/null
	command -v containerd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd >/dev/null
	command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
	command -v cpio >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null
	$(CARGO) build --release -p husk-tests --bin husk-bench
	# NPT, not the tests' shadow paging: under shadow paging 2 of 3 bench attempts wedged the
	# test host (soft lockups); with NPT the whole table ran (and the boot rows need no retry).
	KVM_TEST_HOST_NPT=1 $(VM_RUN) $(RELEASE)/husk-bench

# Soak (tests/src/bin/husk-soak.rs): SOAK_CYCLES create/start/kill -9/delete cycles and
# SOAK_EXECS execs through the husk CLI, SOAK_CTR_EXECS `ctr task exec`s through the shim (0
# skips containerd). Fails on anything left behind or on fd/RSS growth of the long-lived
# processes. tests/soak.sh runs it in segments of SOAK_SEGMENT cycles, each in a fresh test
# host. `make soak SOAK_CYCLES=20 SOAK_EXECS=20` for a quick one.
.PHONY: soak
SOAK_CYCLES    ?= 500
SOAK_EXECS     ?= 200
SOAK_CTR_EXECS ?= 100
SOAK_SEGMENT   ?= 100
soak: build guest-image
	command -v containerd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd >/dev/null
	$(CARGO) build --release -p husk-tests --bin husk-soak
	SOAK_CYCLES=$(SOAK_CYCLES) SOAK_EXECS=$(SOAK_EXECS) SOAK_CTR_EXECS=$(SOAK_CTR_EXECS) \
	  SOAK_SEGMENT=$(SOAK_SEGMENT) $(CURDIR)/tests/soak.sh $(RELEASE)/husk-soak

# PREFIX/bin/{husk,husk-vmm,containerd-shim-husk-v2}, PREFIX/share/husk/{vmlinux,initrd.img}: where husk looks
# by default (relative to its own binary), so no config.toml is needed.
PREFIX ?= /usr/local
install: build guest-image
	install -D -m 0755 $(RELEASE)/husk $(DESTDIR)$(PREFIX)/bin/husk
	install -D -m 0755 $(RELEASE)/husk-vmm $(DESTDIR)$(PREFIX)/bin/husk-vmm
	install -D -m 0755 $(RELEASE)/containerd-shim-husk-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-husk-v2
	install -D -m 0644 $(HUSK_KERNEL) $(DESTDIR)$(PREFIX)/share/husk/vmlinux
	install -D -m 0644 $(HUSK_INITRD) $(DESTDIR)$(PREFIX)/share/husk/initrd.img

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Leaves the kernel caches in /var/cache/husk alone (a rebuild would take minutes).
clean:
	$(CARGO) clean
	rm -rf $(CURDIR)/build
