package mapping

// The specs these tests build use model-specific layers.

import _ "github.com/refiners-go/refiners/models/all"
