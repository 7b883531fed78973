// Package sd15 holds what is specific to Stable Diffusion 1.5: the layers
// of its U-Net that are more than compositions of core layers (sinusoidal
// timestep features, the skip-connection list, the stateful flatten of the
// cross-attention blocks). They register themselves in core's layer
// registry when the package is imported (usually through models/all), so
// that specs/sd15_unet.yaml can use them while core stays generic.
//
// It imports only core, so that every package building specs can import
// it; the pipeline that runs these models lives in models/sd15/pipeline.
package sd15
