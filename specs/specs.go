// Package specs embeds the spec files of this directory, so that a binary
// can build the models it converts and stores without a checkout.
package specs

import "embed"

// FS holds every spec (*.yaml) of this directory, by file name.
//
//go:embed *.yaml
var FS embed.FS
