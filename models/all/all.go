// Package all imports every model package, so that their layers are
// registered: a program that builds arbitrary specs (refinersd, the
// daemon, the conformance tests) imports it for its side effects,
//
//	import _ "github.com/refiners-go/refiners/models/all"
//
// A new model package (ControlNet, SAM, ...) adds its line here.
package all

import (
	_ "github.com/refiners-go/refiners/models/clip"
	_ "github.com/refiners-go/refiners/models/sam"
	_ "github.com/refiners-go/refiners/models/sd15"
)
