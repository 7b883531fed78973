// Package specs carries the project's model specs (the YAML files in this
// directory) inside the binary, so that commands which build a known model,
// such as `refinersd generate`, work from any directory.
package specs

import "embed"

// FS holds every spec of this directory, by file name (e.g. "sd15_unet.yaml").
//
//go:embed *.yaml
var FS embed.FS
