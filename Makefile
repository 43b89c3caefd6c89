# Volant — build, test, demo. `make help` lists the targets.

SHELL       := /bin/bash
GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKG         := github.com/volantvm/volant
# containers/image: pure-Go OpenPGP instead of cgo gpgme; go-sqlite3: link
# Debian's libsqlite3 (compiles ~4x faster). Plain `go build ./...` works
# too (with libgpgme-dev installed), just slower to build.
TAGS        ?= containers_image_openpgp libsqlite3
LDFLAGS     := -X $(PKG)/lib/buildinfo.Version=$(VERSION)
# volant-ipam runs once per lease, where start-up is most of its time: it
# is linked statically, with go-sqlite3's bundled SQLite (the amalgamation)
# and static glibc, so no dynamic loader maps and relocates libsqlite3,
# libc and libm at each start (about 2 ms of 20 on a host where a page
# fault costs 30 us, bench/README.md). The price is compiling the
# amalgamation: about 75 s, once per clean Go build cache. --wrap=mmap
# puts the Go heap in huge pages (cmd/volant-ipam/startup.go).
IPAM_TAGS    ?= sqlite_omit_load_extension
IPAM_LDFLAGS := -linkmode external -extldflags '-static -Wl,--wrap=mmap'
CMDS        := $(notdir $(wildcard cmd/*))
BIN         := $(CURDIR)/bin
KERNEL_DIR  ?= $(or $(VOLANT_KERNEL_DIR),/var/lib/volant/kernel)
GOTEST      := $(GO) test -tags "$(TAGS)" -ldflags "$(LDFLAGS)"
TEST_ENV    := VOLANT_KESTREL=$(BIN)/kestrel VOLANT_BIN=$(BIN) VOLANT_KERNEL_DIR=$(KERNEL_DIR)
FUZZTIME    ?= 60s
# kube-apiserver, -controller-manager, -scheduler and kubectl for
# tests/e2e/kubernetes.sh, built from tools/k8s (make k8s-tools).
K8S_BIN     ?= $(or $(VOLANT_K8S_BIN),/var/cache/volant-k8s/bin)

.PHONY: help all build test test-unit test-vm test-e2e bench fuzz demo demo-stop kernel k8s-tools deps vet clean

help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

all: build ## same as build

build: ## build every command into bin/ (kestrel and volant-launch static, CGO off; volant-ipam static with SQLite; kestrel's flags in lib/kestrel/kestrelbuild)
	@mkdir -p $(BIN)
	$(if $(filter kestrel,$(CMDS)),$(GO) run ./lib/kestrel/kestrelbuild/make.go -go $(GO) -version $(VERSION) -o $(BIN)/kestrel)
	$(if $(filter volant-launch,$(CMDS)),CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/volant-launch ./cmd/volant-launch)
	$(if $(filter volant-ipam,$(CMDS)),$(GO) build -tags "$(IPAM_TAGS)" -ldflags "$(LDFLAGS) $(IPAM_LDFLAGS)" -o $(BIN)/volant-ipam ./cmd/volant-ipam)
	$(GO) build -tags "$(TAGS)" -ldflags "$(LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(filter-out kestrel volant-launch volant-ipam,$(CMDS)))

test: build kernel k8s-tools ## every test tier: unit, contract, privileged (netns), real VMs, e2e scripts
	$(TEST_ENV) $(GOTEST) -timeout 40m ./...
	$(MAKE) test-e2e

test-unit: ## fast tiers only (go test -short: no VMs, no netns)
	$(GOTEST) -short ./...

test-vm: build kernel ## only the real-VM tests (TestVM*)
	$(TEST_ENV) $(GOTEST) -timeout 30m -run 'TestVM' ./...

test-e2e: build kernel k8s-tools ## shell end-to-end scripts in tests/e2e, each in its own netns
	@set -e; for t in tests/e2e/*.sh; do [[ -e $$t ]] || continue; echo "== $$t"; $(TEST_ENV) VOLANT_K8S_BIN=$(K8S_BIN) PATH=$(BIN):$$PATH bash $$t; done

bench: build kernel ## benchmarks under bench/ (ratios, side by side); results in bench/results
	@set -e; for b in bench/*/run.sh; do [[ -e $$b ]] || continue; echo "== $$b"; $(TEST_ENV) PATH=$(BIN):$$PATH bash $$b; done

fuzz: ## run each fuzz target for FUZZTIME (default 60s)
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime $(FUZZTIME) ./lib/manifest
	$(GO) test -run XXX -fuzz FuzzDecodeString -fuzztime $(FUZZTIME) ./lib/manifest

demo: ## the main job: boot a sample VM end to end in a private netns (KEEP=1 leaves it running)
	bash scripts/install-deps.sh demo
	$(MAKE) build kernel
	PATH=$(BIN):$$PATH VOLANT_KERNEL_DIR=$(KERNEL_DIR) KEEP=$(KEEP) bash scripts/demo.sh

demo-stop: ## stop a demo started with KEEP=1
	PATH=$(BIN):$$PATH bash scripts/demo.sh stop

kernel: ## fetch Debian's guest kernel + modules into KERNEL_DIR (idempotent)
	bash scripts/fetch-kernel.sh $(KERNEL_DIR)

k8s-tools: ## build the Kubernetes control plane + kubectl the e2e test runs into K8S_BIN, when missing or stale
	GO=$(GO) bash scripts/k8s-tools.sh $(K8S_BIN)

deps: ## install the Debian packages builds, tests and the demo need
	bash scripts/install-deps.sh

vet: ## go vet with the build tags
	$(GO) vet -tags "$(TAGS)" ./...

clean: ## remove bin/
	rm -rf $(BIN)
