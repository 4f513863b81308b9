# runvm: the two commands that matter on a fresh machine are
#   make run   set up, build, and boot the demo microVM
#   make test  set up, build, lint, and run every test (unit and end to end)

SHELL := /bin/bash
CARGO ?= cargo
HOST_TARGET := x86_64-unknown-linux-gnu
BUILD := build
RELEASE := target/release
AGENT := target/$(HOST_TARGET)/release/runvm-agent
KERNEL := $(BUILD)/vmlinux
INITRD := $(BUILD)/initramfs.cpio
# The test image: the same agent plus Debian's static busybox under /bin.
TOOLS_INITRD := $(BUILD)/initramfs-tools.cpio
BUSYBOX := /bin/busybox
VMM := $(RELEASE)/runvm-vmm

.PHONY: all setup build kernel binaries agent initramfs run test lint unit-test e2e-test bench clean

all: build

setup:
	scripts/setup.sh

build: setup kernel binaries initramfs

# Cached by a hash of its inputs: a second run only copies the vmlinux.
kernel:
	guest-kernel/build.sh $(KERNEL)

binaries:
	$(CARGO) build --release --locked -p runvm-vmm -p runvm -p runvm-rootfs-builder

# PID 1 of the guest: a static binary, since the image holds nothing else.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked \
		-p runvm-agent --target $(HOST_TARGET)

initramfs: agent binaries
	$(RELEASE)/runvm-rootfs-builder --agent $(AGENT) --output $(INITRD)
	$(RELEASE)/runvm-rootfs-builder --agent $(AGENT) --busybox $(BUSYBOX) --output $(TOOLS_INITRD)

run: build
	@echo "== booting a microVM: $(KERNEL) + $(INITRD), agent as PID 1 =="
	$(VMM) --kernel $(KERNEL) --initrd $(INITRD) --init-arg=--poweroff
	@echo "== the microVM powered off cleanly =="

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: build lint
	$(CARGO) test --workspace --locked

bench: build
	scripts/setup.sh --bench
	bench/boot.sh
	bench/exec.sh
	bench/containers.sh

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
