# runvm: the two commands that matter on a fresh machine are
#   make run   set up, build, and run a container in a microVM
#   make test  set up, build, lint, and run every test (unit and end to end)

SHELL := /bin/bash
CARGO ?= cargo
HOST_TARGET := x86_64-unknown-linux-gnu
BUILD := build
RELEASE := target/release
AGENT := target/$(HOST_TARGET)/agent/runvm-agent
KERNEL := $(BUILD)/vmlinux
# The guest image: the agent itself, which runvm-vmm places in guest memory
# and its built-in loader maps as the guest's init (--init-program), so the
# guest kernel reads no page of it. The same agent as an ext4 root disk and
# as an initramfs is built too, for the VMM's --root-disk and --initrd
# paths and the boot benchmark's comparison.
IMAGE := $(BUILD)/runvm-agent
ROOT_DISK := $(BUILD)/rootfs.ext4
INITRD := $(BUILD)/initramfs.cpio
# The test image: the same agent plus Debian's static busybox under /bin.
TOOLS_IMAGE := $(BUILD)/rootfs-tools.ext4
BUSYBOX := /bin/busybox
VMM := $(RELEASE)/runvm-vmm

PREFIX ?= /usr/local
DEMO_BUNDLE := $(BUILD)/demo-bundle

.PHONY: all setup build kernel binaries agent initramfs run test lint unit-test e2e-test fuzz bench install uninstall clean

all: build

setup:
	scripts/setup.sh

build: setup kernel binaries initramfs

# Cached by a hash of its inputs: a second run only copies the vmlinux.
kernel:
	guest-kernel/build.sh $(KERNEL)

binaries:
	$(CARGO) build --release --locked -p runvm-vmm -p runvm -p runvm-shim -p runvm-rootfs-builder

# PID 1 of the guest: a static binary, since the image holds nothing else;
# not position-independent, so nothing is relocated when it starts.
agent:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile agent --locked -p runvm-agent --target $(HOST_TARGET)

initramfs: agent binaries
	install -m 0755 $(AGENT) $(IMAGE)
	$(RELEASE)/runvm-rootfs-builder --agent $(AGENT) --output $(ROOT_DISK)
	$(RELEASE)/runvm-rootfs-builder --agent $(AGENT) --output $(INITRD)
	$(RELEASE)/runvm-rootfs-builder --agent $(AGENT) --busybox $(BUSYBOX) --output $(TOOLS_IMAGE)

# The main job: a busybox container in its own microVM, through the runc
# command line (`runvm run`), with the parts taken from the build tree.
run: build
	scripts/demo-bundle.sh $(RELEASE)/runvm $(DEMO_BUNDLE)
	@echo "== runvm run: a container in a microVM ($(KERNEL) + $(IMAGE)) =="
	RUNVM_VMM=$(VMM) RUNVM_KERNEL=$(KERNEL) RUNVM_IMAGE=$(IMAGE) \
		$(RELEASE)/runvm --root $(BUILD)/state run --bundle $(DEMO_BUNDLE) demo-$$$$
	@echo "== the container exited 0 and its microVM is gone =="

# runvm, its VMM, the guest kernel and image, and virtiofsd, where runvm
# finds them by itself (podman and containerd pass no configuration).
install: build
	install -D -m 0755 $(RELEASE)/runvm $(DESTDIR)$(PREFIX)/bin/runvm
	install -D -m 0755 $(VMM) $(DESTDIR)$(PREFIX)/bin/runvm-vmm
	install -D -m 0755 $(RELEASE)/containerd-shim-runvm-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-runvm-v2
	install -D -m 0644 $(KERNEL) $(DESTDIR)$(PREFIX)/share/runvm/vmlinux
	install -D -m 0755 $(IMAGE) $(DESTDIR)$(PREFIX)/share/runvm/runvm-agent
	install -D -m 0755 "$$(command -v virtiofsd || echo $${CARGO_HOME:-$$HOME/.cargo}/bin/virtiofsd)" \
		$(DESTDIR)$(PREFIX)/libexec/runvm/virtiofsd

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/runvm $(DESTDIR)$(PREFIX)/bin/runvm-vmm
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-runvm-v2
	rm -rf $(DESTDIR)$(PREFIX)/share/runvm $(DESTDIR)$(PREFIX)/libexec/runvm

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: build lint
	$(CARGO) test --workspace --locked --exclude runvm-e2e
	scripts/fuzz.sh
	scripts/e2e.sh

# Every fuzz target in fuzz/ for a bounded time (6-12 s each, seeds in
# fuzz/corpus/); installs nightly and cargo-fuzz if missing. A longer run:
# FUZZ_SECONDS=600 scripts/fuzz.sh <target>.
fuzz:
	scripts/fuzz.sh

bench: build
	scripts/setup.sh --bench
	bench/boot.sh
	bench/exec.sh
	bench/containers.sh
	bench/coldstart.sh
	bench/podstart.sh
	bench/podnet.sh
	bench/templates.sh

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
	rm -rf fuzz/target fuzz/artifacts
