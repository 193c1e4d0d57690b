# SAG build and test entry points. `make test` is what CI runs (.ci/run).
GO ?= go
FUZZTIME ?= 10s

.PHONY: all build vet unit fuzz-short test e2e e2e-direct bench fuzz clean distclean

all: build

build:
	$(GO) build -o bin/sag ./cmd/sag

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The store's tests run twice: on SQLite, then on a throwaway PostgreSQL
# (internal/pgtest; e2e/postgres.sh installs Debian's postgresql if missing).
unit:
	$(GO) test -race -count=1 ./...
	SAG_TEST_POSTGRES=1 $(GO) test -race -count=1 ./store/

# A short run of every fuzz target (300 inputs each beyond its seeds).
fuzz-short:
	FUZZTIME=300x GO=$(GO) bash .ci/fuzz.sh

# vet, unit tests with the race detector, a short fuzz run, then the
# end-to-end suite.
test: vet unit fuzz-short e2e

# Conformance suite, Inspector CLI smoke test, DPoP interop (Node dpop, oauth4webapi) and a real SPIRE against `sag serve` (e2e/README.md).
e2e:
	bash e2e/run.sh

# The same suite against the go-sdk everything-server directly (the baseline).
e2e-direct:
	E2E_DIRECT=1 bash e2e/run.sh

bench:
	$(GO) run ./cmd/sag bench

# Runs every Fuzz target for $(FUZZTIME) each.
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) bash .ci/fuzz.sh

clean:
	rm -rf bin e2e/out

distclean: clean
	rm -rf e2e/node_modules
