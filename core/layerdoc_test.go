package core

import (
	"strings"
	"testing"
)

// TestCoreLayersAreDocumented: every layer core registers has its
// reference documentation (models/* are checked where models/all is
// imported: cmd/refinersd's layer reference test).
func TestCoreLayersAreDocumented(t *testing.T) {
	if missing := Undocumented(); len(missing) > 0 {
		t.Errorf("the layer reference lacks:\n%s", strings.Join(missing, "\n"))
	}
}

func TestDocumentTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("documenting Linear twice did not panic")
		}
	}()
	Document("Linear", LayerDoc{Refiners: "fl.Linear"})
}
