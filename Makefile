# Entry points. Every target runs the (idempotent, fast) machine set-up
# first, so each works on a fresh machine.

GO ?= go
# libtorch's intra-op pool: both cores, fixed so timings are comparable.
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test vet bench loadtest golden conformance conformance-full

setup:
	@scripts/setup.sh

demo: setup
	$(GO) run ./cmd/refinersd demo

vet: setup
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

test: vet
	$(GO) test ./...
	$(GO) test -run='^$$' -fuzz=FuzzSpec -fuzztime=20s -fuzzminimizetime=5s ./spec
	$(GO) test -run='^$$' -fuzz=FuzzExpr -fuzztime=20s -fuzzminimizetime=5s ./spec
	$(GO) test -run='^$$' -fuzz=FuzzRunRequest -fuzztime=20s -fuzzminimizetime=5s ./daemon
	$(GO) test -run='^$$' -fuzz=FuzzRunMultipart -fuzztime=20s -fuzzminimizetime=5s ./daemon
	$(GO) test -run='^$$' -fuzz=FuzzOpen -fuzztime=20s -fuzzminimizetime=5s ./core/weights
	scripts/check-cuda-link.sh

bench: setup
	$(GO) test -run='^$$' -bench=. -benchtime=20000x ./core/tensor
	$(GO) run ./cmd/refiners-bench

# A bounded load test of `refinersd serve` on loopback: prints throughput,
# latency percentiles, 429s and adapter grouping.
loadtest: setup
	$(GO) test -count=1 -run TestServeLoad -v ./cmd/refinersd

# The pinned Python reference (torch 2.1.2, refiners 0.4.0) lives in
# conformance/.venv; it is only needed to regenerate golden vectors.
golden: setup
	conformance/setup-python.sh
	conformance/.venv/bin/python conformance/generate_layers.py
	for g in vit clip_text sd15_vae sd15_unet lora; do conformance/.venv/bin/python conformance/generate_$$g.py || exit 1; done

conformance: setup
	@report=$$(mktemp); CONFORMANCE_REPORT=$$report $(GO) test -count=1 ./conformance; status=$$?; cat $$report; rm -f $$report; exit $$status

# Real-size models with random weights: generated on demand (several GB,
# not committed), then checked. Needs the reference environment.
conformance-full: setup
	conformance/setup-python.sh
	for g in vit clip_text sd15_vae sd15_unet lora; do conformance/.venv/bin/python conformance/generate_$$g.py --full || exit 1; done
	@report=$$(mktemp); CONFORMANCE_TIER=full CONFORMANCE_REPORT=$$report $(GO) test -count=1 -timeout 90m -run 'TestSpecs|TestLora' ./conformance; status=$$?; cat $$report; rm -f $$report; exit $$status
