// Package sd15 holds what is specific to Stable Diffusion 1.5: the layers
// of its U-Net that are more than compositions of core layers (sinusoidal
// timestep features, the skip-connection list, the stateful flatten of the
// cross-attention blocks). They register themselves in core's layer
// registry when the package is imported (usually through models/all), so
// that specs/sd15_unet.yaml can use them while core stays generic.
package sd15
