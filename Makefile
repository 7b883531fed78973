# Entry points. Every target runs the (idempotent, fast) machine set-up
# first, so each works on a fresh machine.

GO ?= go
# libtorch's intra-op pool: both cores, fixed so timings are comparable.
export OMP_NUM_THREADS ?= 2

.PHONY: setup serve-demo setup-browser test-browser demo test vet bench bench-convert bench-sd15 bench-sam bench-vs-refiners gpu-check conformance-sam-full loadtest scaleout golden conformance conformance-full conformance-pipeline-full

setup:
	@scripts/setup.sh

# Chromium for the browser tests (Debian's package; idempotent).
setup-browser:
	@scripts/setup-browser.sh

demo: setup
	$(GO) run ./cmd/refinersd demo

# A fresh clone serving images: a tiny random-weight SD 1.5 (and ControlNet)
# in DEMO_DIR, the LoRA and ControlNet plugins installed, then the daemon
# on http://127.0.0.1:8642 (docs/api.md, Images).
DEMO_DIR ?= $(CURDIR)/.demo
serve-demo: setup
	@mkdir -p $(DEMO_DIR)/bin/plugins
	$(GO) build -o $(DEMO_DIR)/bin/refinersd ./cmd/refinersd
	$(GO) build -o $(DEMO_DIR)/bin/plugins/lora ./plugins/lora
	$(GO) build -o $(DEMO_DIR)/bin/plugins/controlnet ./plugins/controlnet
	$(DEMO_DIR)/bin/refinersd demo-weights --force $(DEMO_DIR)
	$(DEMO_DIR)/bin/refinersd plugins install $(DEMO_DIR)/bin/plugins --dir $(DEMO_DIR)/plugins
	$(DEMO_DIR)/bin/refinersd serve --config $(DEMO_DIR)/config.yaml

vet: setup
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	cd deploy && $(GO) vet ./...
	cd examples/third-party-plugin && $(GO) vet ./...

# libtorch picks its CPU kernels (and so the order of its float sums) by the
# instruction sets it finds; ATEN_CPU_CAPABILITY forces a lower set. The
# numeric packages run once per kernel path this CPU can take, so a machine
# of one kind proves the suite holds on the others (scripts/cpu-capabilities.sh).
NUMERIC_PKGS = ./conformance ./core/... ./diffusion ./adapt ./models/... ./plugins/controlnet ./plugins/sam

# REFINERS_BROWSER_TESTS=1: the browser tests fail, not skip, without Chromium;
# cmd/refinersd (the real binary, browsers included) needs more than the
# default 10 minutes on a busy 2-core machine.
test: vet setup-browser
	REFINERS_BROWSER_TESTS=1 $(GO) test -timeout 30m ./...
	cd deploy && $(GO) test -count=1 ./...
	@for cap in $$(scripts/cpu-capabilities.sh); do \
		echo "ATEN_CPU_CAPABILITY=$$cap $(GO) test -count=1 $(NUMERIC_PKGS)"; \
		ATEN_CPU_CAPABILITY=$$cap $(GO) test -count=1 $(NUMERIC_PKGS) || exit 1; \
	done
	$(GO) test -run='^$$' -fuzz=FuzzSpec -fuzztime=20s -fuzzminimizetime=5s ./spec
	$(GO) test -run='^$$' -fuzz=FuzzExpr -fuzztime=20s -fuzzminimizetime=5s ./spec
	$(GO) test -run='^$$' -fuzz=FuzzRunRequest -fuzztime=20s -fuzzminimizetime=5s ./daemon
	$(GO) test -run='^$$' -fuzz=FuzzRunMultipart -fuzztime=20s -fuzzminimizetime=5s ./daemon
	$(GO) test -run='^$$' -fuzz=FuzzOpen -fuzztime=20s -fuzzminimizetime=5s ./core/weights
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=20s -fuzzminimizetime=5s ./torchfile
	scripts/check-cuda-link.sh

# The web page in headless Chromium against the real daemon; screenshots
# of each step in test-output/browser/.
test-browser: setup setup-browser
	REFINERS_BROWSER_TESTS=1 $(GO) test -count=1 -run 'TestBrowser' -v ./cmd/refinersd

bench: setup
	$(GO) test -run='^$$' -bench=. -benchtime=20000x ./core/tensor
	$(GO) run ./cmd/refiners-bench

# `refinersd convert` on a full SD 1.5 single-file checkpoint (random
# weights, 4.3 GB, generated once, not committed): time and peak RSS
# against the largest component, as safetensors and as .ckpt.
bench-convert: setup
	@test -f conformance/testdata/full/convert/sd15_bench.safetensors || { conformance/setup-python.sh && conformance/.venv/bin/python conformance/generate_convert.py --bench; }
	$(GO) run ./cmd/refiners-bench -mode convert -convert-src conformance/testdata/full/convert/sd15_bench.safetensors
	$(GO) run ./cmd/refiners-bench -mode convert -convert-src conformance/testdata/full/convert/sd15_bench.ckpt

# The SD 1.5 pipeline end to end at full size (512x512, random weights,
# float32 and float64 references): slow, kept apart from conformance-full.
conformance-pipeline-full: setup
	conformance/setup-python.sh
	conformance/.venv/bin/python conformance/generate_pipeline.py --full
	@report=$$(mktemp); CONFORMANCE_TIER=full CONFORMANCE_REPORT=$$report $(GO) test -count=1 -timeout 120m -run 'TestPipeline' ./conformance; status=$$?; cat $$report; rm -f $$report; exit $$status

# The SD 1.5 pipeline against Refiners' on full-size random weights (written
# once to $TMPDIR/refiners-sd15-random, 4.3 GB): seconds per step, peak RSS.
bench-sd15: setup
	conformance/setup-python.sh
	$(GO) run ./cmd/refiners-bench -mode sd15

# The SAM predictor against Refiners' SegmentAnything at ViT-B size (random
# weights), interleaved, and the daemon's throughput for 20 prompts on one image.
bench-sam: setup
	conformance/setup-python.sh
	$(GO) run ./cmd/refiners-bench -mode sam -sam-size vit_b

# The predictor on official checkpoints at full size (random weights, not
# committed: ViT-B a 358 MiB .pth, ViT-L 1.2 GiB, about 12 GB of memory to
# generate) against the official SamPredictor, under each CPU capability.
SAM_SIZES ?= vit_b vit_l
conformance-sam-full: setup
	conformance/setup-python.sh
	@status=0; for size in $(SAM_SIZES); do \
		conformance/.venv/bin/python conformance/generate_sam_official.py --full --size $$size || exit 1; \
		for cap in $$(scripts/cpu-capabilities.sh); do \
			report=$$(mktemp); echo "== $$size, ATEN_CPU_CAPABILITY=$$cap"; \
			ATEN_CPU_CAPABILITY=$$cap CONFORMANCE_TIER=full SAM_SIZE=$$size CONFORMANCE_REPORT=$$report \
				$(GO) test -count=1 -timeout 60m -run 'TestSAMOfficial' ./conformance || status=1; \
			cat $$report; rm -f $$report; \
		done; \
	done; exit $$status

# Go against Refiners 0.4.0 model by model (SD 1.5 UNet, VAE decoder,
# CLIP-L) on full-size random weights written once to $(BENCH_DIR) (4.3 GB,
# gitignored): forward, time to a ready model and peak RSS, each side in
# fresh processes, interleaved and repeated; prints medians, spread, ratios.
BENCH_DIR ?= conformance/testdata/full/bench
BENCH_REPEATS ?= 3
BENCH_MODELS ?= unet,vae,clip
bench-vs-refiners: setup
	conformance/setup-python.sh
	$(GO) run ./cmd/refiners-bench -mode vs-refiners -sd15-dir $(BENCH_DIR) -repeats $(BENCH_REPEATS) -vs-models $(BENCH_MODELS)

# On a machine with an NVIDIA GPU: CUDA builds, conformance on the GPU in
# float32 and float16, the benchmark on the GPU (scripts/gpu-check.sh).
gpu-check:
	scripts/gpu-check.sh

# A bounded load test of `refinersd serve` on loopback: prints throughput,
# latency percentiles, 429s and adapter grouping.
loadtest: setup
	$(GO) test -count=1 -run TestServeLoad -v ./cmd/refinersd

# Three replicas over one S3 store (versitygw) behind HAProxy
# (deploy/haproxy.cfg) on loopback: a bounded load of several adapter sets,
# swaps with and without hashing, one replica killed and one drained
# mid-load; prints a table and fails on any lost or wrong answer.
scaleout: setup
	scripts/setup-haproxy.sh
	scripts/build-versitygw.sh >/dev/null
	$(GO) run ./internal/scaleout

# The pinned Python reference (torch 2.1.2, refiners 0.4.0) lives in
# conformance/.venv; it is only needed to regenerate golden vectors.
golden: setup
	conformance/setup-python.sh
	conformance/.venv/bin/python conformance/generate_layers.py
	for g in vit clip_text sd15_vae sd15_unet controlnet sam sam_predict sam_official lora convert; do conformance/.venv/bin/python conformance/generate_$$g.py || exit 1; done
	conformance/.venv/bin/python conformance/generate_solvers.py
	conformance/.venv/bin/python conformance/generate_init.py
	conformance/.venv/bin/python conformance/generate_tokenizer.py
	conformance/.venv/bin/python conformance/generate_pipeline.py
	conformance/.venv/bin/python conformance/generate_canny.py

conformance: setup
	@status=0; for cap in $$(scripts/cpu-capabilities.sh); do \
		report=$$(mktemp); echo "== ATEN_CPU_CAPABILITY=$$cap"; \
		ATEN_CPU_CAPABILITY=$$cap CONFORMANCE_REPORT=$$report $(GO) test -count=1 ./conformance || status=1; \
		cat $$report; rm -f $$report; \
	done; exit $$status

# Real-size models with random weights: generated on demand (several GB,
# not committed), then checked. Needs the reference environment.
conformance-full: setup
	conformance/setup-python.sh
	for g in vit clip_text sd15_vae sd15_unet sam lora convert; do conformance/.venv/bin/python conformance/generate_$$g.py --full || exit 1; done
	@report=$$(mktemp); CONFORMANCE_TIER=full CONFORMANCE_REPORT=$$report $(GO) test -count=1 -timeout 90m -run 'TestSpecs|TestLora|TestConvert' ./conformance; status=$$?; cat $$report; rm -f $$report; exit $$status
