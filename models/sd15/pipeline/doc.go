// Package pipeline is the Stable Diffusion 1.5 pipeline: prompt to image,
// as Refiners 0.4.0's StableDiffusion_1 and StableDiffusion_1_Inpainting do
// it (refiners.foundationals.latent_diffusion), over the project's specs of
// the three models (specs/clip_text.yaml, sd15_unet.yaml,
// sd15_vae_encoder.yaml and sd15_vae_decoder.yaml), the CLIP tokenizer of
// models/clip and the solvers of package diffusion. Load builds and loads
// the models; Model.Generate runs text to image, image to image and
// inpainting with classifier-free guidance, a batch of seeds, cancellation
// between steps, a per-step progress callback and adapters (LoRA) planned
// by plugins for one generation.
//
// It is a package of its own, apart from models/sd15's layers, because it
// builds specs and applies adapters (spec, adapt, hosts), while the layers
// must be importable by those very packages.
package pipeline
