// Command refinersd is refiners-go's daemon and command-line tool. With no
// verb it runs the built-in demo: it builds a small model, prints its tree
// and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	_ "github.com/refiners-go/refiners/models/all" // the layers of every model the specs may use
	"github.com/refiners-go/refiners/spec"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "refinersd:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	verb := "demo"
	if len(args) > 0 {
		verb, args = args[0], args[1:]
	}
	switch verb {
	case "demo":
		return demo(args, out)
	case "inspect":
		return inspect(args, out)
	case "plan":
		return plan(args, out)
	case "run":
		return runSpec(args, out)
	case "generate":
		return generate(args, out)
	case "demo-weights":
		return demoWeights(args, out)
	case "segment":
		return segment(args, out)
	case "plugins":
		return pluginsVerb(args, out)
	case "serve":
		return serve(args, out)
	case "models":
		return modelsVerb(args, out)
	case "convert":
		return convertVerb(args, out)
	case "adapters":
		return adaptersVerb(args, out)
	case "init":
		return initVerb(args, out)
	case "lint":
		return lint(args, out)
	case "fmt":
		return fmtVerb(args, out)
	case "explain":
		return explainVerb(args, out)
	case "layers":
		return layersVerb(args, out)
	case "schema":
		b, err := spec.Schema()
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(b))
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	return fmt.Errorf("unknown verb %q (try: refinersd help)", verb)
}

const usage = `usage: refinersd VERB [flags]

  demo                          build a small transformer block, print its tree, run it (default)
  inspect SPEC [--set k=v]...   print the model a spec declares, as a tree; with --input-shape 1,3,32,32
                                (or --input IN) run it once and print each layer's output shape and parameters
  init SPEC --output W [--seed N]
                                write weights initialised as PyTorch initialises the layers
  plan SPEC --weights W         dry run: check every parameter's shape against W's header
  lint SPEC [--set k=v]...      unused params and blocks, shadowed names, arguments equal to
                                their defaults, layers whose weights cannot reach the output
  fmt [-w|-l|-d] SPEC...        print specs in canonical form (in place with -w, list with -l, diff with -d)
  explain [CODE]                what an error code (RFN-S012) means, an example, the fix (docs/errors.md)
  layers [NAME]                 the layer types specs can use (docs/layers.md): all, or one in full
  schema                        print the JSON Schema of spec files (for editors)
  plugins install PATH|DIR      install plugin binaries (pinned by sha256 in plugins.lock.json)
  plugins list | remove NAME    show or uninstall installed plugins
  plugins check BINARY          run the plugin conformance kit against a binary
  serve [--addr A] [--config F]  the daemon: HTTP API on 127.0.0.1:8642 by default (docs/api.md);
                                off loopback it needs a token (REFINERSD_TOKEN)
  convert SRC --to OUT [--component C] [--dtype D] [--ema] [--lenient] [--dry-run]
                                convert a diffusers folder, an SD 1.5 single-file checkpoint
                                (.safetensors, .ckpt) or a PyTorch file to the specs' keys
                                (docs/convert.md); OUT: a .safetensors file or a folder
  models add NAME --spec S --weights W [--set k=v]... [--prefix P]
  models add NAME --from SRC [--component C] [--dtype D] [--ema]
                                convert SRC and store each model it holds (NAME-unet, ...)
  models list | show NAME | rm NAME
                                the daemon's model store ($REFINERSD_STORE)
  adapters add NAME FILE | list | rm NAME
                                adapter files in the store, for per-request adapters
  run SPEC --weights W --input IN --output OUT [--adapter PLUGIN:FILE[:PARAMS]]... [--fuse]
                                run a model: IN holds input.0, input.1, ... and
                                context.<name>.<key> tensors; OUT gets output.0, ...;
                                each --adapter is planned by an installed plugin and applied
  generate --prompt TEXT --output OUT.png --unet W --text-encoder W --autoencoder W [flags]
                                Stable Diffusion 1.5: text to image, image to image, inpainting
                                (refinersd generate -h; docs/generate.md)
  demo-weights DIR [--force]    write a tiny random-weight SD 1.5, a ControlNet and a serve config
                                (refinersd serve --config DIR/config.yaml; make serve-demo)
  segment --weights SAM --image IN --point X,Y[,fg|bg]... [--box X0,Y0,X1,Y1] --output MASK.png
                                Segment Anything: masks from points and boxes (refinersd segment -h;
                                docs/sam.md)

Common flags: --set name=value (repeatable) overrides a spec parameter;
--prefix P reads weights under keys P<key>; --device cpu|cuda[:N];
plugins: --dir D (default $REFINERS_PLUGINS or ~/.local/share/refiners/plugins).
`

// demoModel is a small transformer block: self-attention and a GeLU MLP,
// each in a residual with a layer norm, as in ViT and CLIP.
func demoModel(dim, heads int64) (*core.Chain, error) {
	attn, err := core.NewSelfAttention(dim, core.AttentionOptions{Heads: heads})
	if err != nil {
		return nil, err
	}
	gelu, err := core.NewGeLU(core.GeLUExact)
	if err != nil {
		return nil, err
	}
	block := core.NewNamed("TransformerLayer", core.Sequence,
		core.NewResidual(core.NewLayerNorm(dim), attn),
		core.NewResidual(core.NewLayerNorm(dim), core.NewLinear(dim, 4*dim, true), gelu, core.NewLinear(4*dim, dim, true)),
	)
	return core.NewChain(block, core.NewLayerNorm(dim)), nil
}

func demo(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	seed := fs.Int64("seed", 0, "random seed for weights and input")
	tokens := fs.Int64("tokens", 16, "sequence length of the input")
	if err := fs.Parse(args); err != nil {
		return err
	}
	const dim, heads = 64, 4
	model, err := demoModel(dim, heads)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, model)
	return tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if err := core.InitRandom(s, model, *seed); err != nil {
			return err
		}
		defer core.ReleaseParams(model)
		n := len(core.StateDict(model))
		x := s.FromFloat32(randomInput(*seed+1, *tokens*dim), 1, *tokens, dim)
		start := time.Now()
		y, err := core.Forward(s, model, x)
		if err != nil {
			return err
		}
		took := time.Since(start)
		vals := s.Float32s(y[0])
		if err := s.Err(); err != nil {
			return err
		}
		fmt.Fprintf(out, "\n%d parameter tensors, input %v -> output %v in %v\n", n, x.Shape(), y[0].Shape(), took.Round(time.Microsecond))
		fmt.Fprintf(out, "output[0, 0, :4] = %.4f\n", vals[:4])
		return nil
	})
}

// randomInput is a deterministic pseudo-random vector in [-1, 1).
func randomInput(seed, n int64) []float32 {
	v := make([]float32, n)
	x := uint64(seed)*6364136223846793005 + 1442695040888963407
	for i := range v {
		x = x*6364136223846793005 + 1442695040888963407
		v[i] = float32(int64(x>>11)%(1<<20))/float32(1<<19) - 1
	}
	return v
}
