package pipeline

import (
	"fmt"
	"maps"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	_ "github.com/refiners-go/refiners/models/all" // the layers the specs use
	"github.com/refiners-go/refiners/models/clip"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// LatentScale is SD1Autoencoder.encoder_scale: latents are the encoder's
// output times this, and the decoder's input divided by it.
const LatentScale = 0.18215

// Config says where the weights are and how to build the models.
type Config struct {
	// Weight files in Refiners' layout: the SD1UNet state dict, the
	// CLIPTextEncoderL state dict and the SD1Autoencoder state dict (keys
	// Encoder.* and Decoder.*), as Refiners' conversion scripts write them.
	UNet, TextEncoder, Autoencoder string
	// Spec parameter overrides per model (e.g. tiny test models). The
	// U-Net's in_channels is read from its weights (4, or 9 for an
	// inpainting U-Net) unless set here.
	UNetParams, TextEncoderParams, AutoencoderParams map[string]string
	Device                                           tensor.Device
	DType                                            tensor.DType // float32 when zero
}

// Model is a loaded Stable Diffusion 1.5: its four chains (the autoencoder
// is two: Refiners runs SD1Autoencoder's halves separately too), the
// tokenizer, and where they run.
type Model struct {
	UNet, TextEncoder, Encoder, Decoder *core.Chain
	Tokenizer                           *clip.Tokenizer
	// InChannels is the U-Net's input width: 4, or 9 for inpainting
	// (latents, mask, masked-image latents).
	InChannels int64
	Device     tensor.Device
	DType      tensor.DType
	// Plugins plans the adapters of a request; needed only for those.
	Plugins *hosts.Host
	// unetSet are the U-Net's spec parameters as built (in_channels and
	// the overrides): ControlNets take its num_heads and num_groups.
	unetSet map[string]string
}

// inChannelsKey holds the U-Net's first convolution: [channels_1, in_channels, 3, 3].
const inChannelsKey = "DownBlocks.Chain_1.Conv2d.weight"

// Load builds the four models from the embedded specs and loads their
// weights strictly (every key present, none extra, shapes equal). Errors
// name the model and the file. The weights are kept in s's worker until
// Release.
func Load(s *tensor.Scope, c Config) (*Model, error) {
	if c.DType == 0 {
		c.DType = tensor.Float32
	}
	if !c.DType.IsFloat() {
		return nil, fmt.Errorf("sd15: dtype %s is not a floating-point type", c.DType)
	}
	if err := tensor.Supports(c.DType, c.Device); err != nil {
		return nil, fmt.Errorf("sd15: %w", err)
	}
	for _, f := range []struct{ what, path string }{{"U-Net", c.UNet}, {"text encoder", c.TextEncoder}, {"autoencoder", c.Autoencoder}} {
		if f.path == "" {
			return nil, fmt.Errorf("sd15: no %s weights given", f.what)
		}
	}
	tok, err := clip.NewTokenizer()
	if err != nil {
		return nil, fmt.Errorf("sd15: tokenizer: %w", err)
	}
	m := &Model{Tokenizer: tok, Device: c.Device, DType: c.DType}
	loaded := false
	defer func() {
		if !loaded {
			m.Release() // what was loaded before the failure
		}
	}()

	unetParams := maps.Clone(c.UNetParams)
	if unetParams == nil {
		unetParams = map[string]string{}
	}
	if _, set := unetParams["in_channels"]; !set {
		header, _, err := weights.ReadHeader(c.UNet)
		if err != nil {
			return nil, fmt.Errorf("sd15: U-Net: %w", err)
		}
		for _, info := range header {
			if info.Key == inChannelsKey && len(info.Shape) == 4 {
				unetParams["in_channels"] = fmt.Sprint(info.Shape[1])
			}
		}
		if unetParams["in_channels"] == "" {
			return nil, fmt.Errorf("sd15: U-Net: %s has no %s [channels, in_channels, 3, 3]: not an SD 1.5 U-Net in Refiners' layout", c.UNet, inChannelsKey)
		}
	}
	if _, err := fmt.Sscan(unetParams["in_channels"], &m.InChannels); err != nil || (m.InChannels != 4 && m.InChannels != 9) {
		return nil, fmt.Errorf("sd15: U-Net: in_channels %q: want 4 (text to image) or 9 (inpainting)", unetParams["in_channels"])
	}

	m.unetSet = unetParams
	for _, part := range []struct {
		name, spec, weights, prefix string
		params                      map[string]string
		dst                         **core.Chain
	}{
		{"U-Net", "sd15_unet.yaml", c.UNet, "", unetParams, &m.UNet},
		{"text encoder", "clip_text.yaml", c.TextEncoder, "", c.TextEncoderParams, &m.TextEncoder},
		{"autoencoder encoder", "sd15_vae_encoder.yaml", c.Autoencoder, "Encoder.", c.AutoencoderParams, &m.Encoder},
		{"autoencoder decoder", "sd15_vae_decoder.yaml", c.Autoencoder, "Decoder.", c.AutoencoderParams, &m.Decoder},
	} {
		chain, err := build(part.spec, part.params)
		if err != nil {
			return nil, fmt.Errorf("sd15: %s: %w", part.name, err)
		}
		if err := load(s, chain, part.weights, part.prefix, c.Device, c.DType); err != nil {
			core.ReleaseParams(chain)
			return nil, fmt.Errorf("sd15: %s: %w", part.name, err)
		}
		*part.dst = chain
	}
	loaded = true
	return m, nil
}

// build builds one embedded spec.
func build(name string, params map[string]string) (*core.Chain, error) {
	sp, err := spec.LoadFS(specs.FS, name)
	if err != nil {
		return nil, err
	}
	return sp.Build(params)
}

// load fills a chain's parameters from a weights file, strictly.
func load(s *tensor.Scope, m *core.Chain, path, prefix string, dev tensor.Device, dt tensor.DType) error {
	f, err := weights.Open(path)
	if err != nil {
		return err
	}
	// The loaded weights view the file's mapping, which lives on after
	// Close for as long as they do.
	defer f.Close()
	if dt != tensor.Float32 {
		if err := core.ToDType(s, m, dt); err != nil {
			return err
		}
	}
	_, err = core.LoadState(s, m, f, core.LoadOptions{Strict: true, Prefix: prefix, Device: dev})
	return err
}

// Release drops every weight; the model is unusable afterwards.
func (m *Model) Release() {
	for _, c := range []*core.Chain{m.UNet, m.TextEncoder, m.Encoder, m.Decoder} {
		if c != nil {
			core.ReleaseParams(c)
		}
	}
}
